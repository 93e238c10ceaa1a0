// Safetensors files and the half-precision formats they hold, read and written without a
// library (the Hugging Face interop of checkpoint/hf.h is built on them).
//
// Safetensors (written and read here, no library): an 8-byte little-endian header length N, N
// bytes of JSON {name: {"dtype", "shape", "data_offsets": [begin, end)}, "__metadata__": {...}}
// padded with spaces to a multiple of 8 bytes, then the tensor data (offsets relative to the end
// of the header). Exported dtypes: BF16 (round to nearest even) and F32; imported: BF16, F16, F32.
// This code assumes a little-endian host (x86-64, aarch64).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ltrain/core/param_set.h"

namespace ltrain {

// ---- bf16 / f16 -----------------------------------------------------------------------------
// float_to_bf16 and bf16_to_float: core/tensor.h
float f16_to_float(uint16_t h);   // IEEE half, subnormals, inf and NaN included
float bf16_round(float x);        // bf16_to_float(float_to_bf16(x))

// ---- safetensors ----------------------------------------------------------------------------
// Bytes per element of a safetensors dtype: "F32" 4, "BF16" and "F16" 2, anything else 0.
size_t safetensors_dtype_bytes(const std::string& dtype);
// A shape as a header lists it, and that list as text for messages ("[4096,4096]").
std::vector<int64_t> safetensors_shape(const Shape& s);
std::string shape_text(const std::vector<int64_t>& s);

struct SafetensorsEntry {
  std::string name;
  std::string dtype;            // "F32", "BF16" or "F16"
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // data_offsets, relative to data_start
};

struct SafetensorsHeader {
  std::string path;
  uint64_t data_start = 0;  // 8 + header length
  uint64_t file_bytes = 0;
  std::vector<SafetensorsEntry> entries;  // in data order
  nlohmann::json metadata;                // "__metadata__" (null when absent)
};

// Parses and checks the header: length within the file, valid JSON, known dtypes, offsets that
// match the shape and stay within the file. UserError naming the file (and tensor).
SafetensorsHeader read_safetensors_header(const std::string& path);
// One tensor converted to fp32.
std::vector<float> read_safetensors_tensor(const SafetensorsHeader& h, const SafetensorsEntry& e);
// Every tensor of a file, as fp32, in data order.
std::vector<HostTensor> read_safetensors(const std::string& path);
// Writes the tensors (in this order) as dtype "F32" or "BF16"; atomic (temporary name + rename).
void write_safetensors(const std::string& path, const std::vector<const HostTensor*>& tensors,
                       const std::string& dtype);

}  // namespace ltrain
