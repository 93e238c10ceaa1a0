#include "ltrain/checkpoint/safetensors.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <set>

#include "ltrain/core/check.h"
#include "ltrain/core/io.h"

namespace ltrain {

// ---- bf16 / f16 -----------------------------------------------------------------------------

float f16_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  uint32_t u;
  if (exp == 0) {
    if (mant == 0) {
      u = sign;
    } else {  // subnormal: mant * 2^-24
      const float v = std::ldexp(float(mant), -24);
      return sign ? -v : v;
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | (mant << 13);  // inf or NaN
  } else {
    u = sign | ((exp + 112u) << 23) | (mant << 13);  // rebias 15 -> 127
  }
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

float bf16_round(float x) { return bf16_to_float(float_to_bf16(x)); }

// ---- safetensors ----------------------------------------------------------------------------

size_t safetensors_dtype_bytes(const std::string& dtype) {
  if (dtype == "F32") return 4;
  if (dtype == "BF16" || dtype == "F16") return 2;
  return 0;
}

std::string shape_text(const std::vector<int64_t>& s) { return nlohmann::json(s).dump(); }

std::vector<int64_t> safetensors_shape(const Shape& s) { return std::vector<int64_t>(s.dims, s.dims + s.ndim); }

namespace {

constexpr uint64_t kMaxHeaderBytes = 100u << 20;  // the format's own limit

int64_t numel_of(const std::vector<int64_t>& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

}  // namespace

SafetensorsHeader read_safetensors_header(const std::string& path) {
  SafetensorsHeader h;
  h.path = path;
  if (!file_exists(path)) user_error("safetensors file not found: '", path, "'");
  h.file_bytes = file_size(path);
  if (h.file_bytes < 8)
    user_error(path, ": not a safetensors file (", h.file_bytes, " bytes, less than the 8-byte header length)");
  std::ifstream in(path, std::ios::binary);
  if (!in) user_error("cannot read file '", path, "': ", std::strerror(errno));
  unsigned char lenb[8];
  in.read(reinterpret_cast<char*>(lenb), 8);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | lenb[i];
  if (n > h.file_bytes - 8)
    user_error(path, ": corrupt safetensors header: header length ", n, " is beyond the end of the file (",
               h.file_bytes, " bytes)");
  if (n > kMaxHeaderBytes) user_error(path, ": corrupt safetensors header: header length ", n, " exceeds 100 MiB");
  std::string text(size_t(n), '\0');
  in.read(text.data(), std::streamsize(n));
  if (!in) user_error(path, ": cannot read the safetensors header");
  h.data_start = 8 + n;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    user_error(path, ": corrupt safetensors header: not valid JSON (", e.what(), ")");
  }
  if (!j.is_object()) user_error(path, ": corrupt safetensors header: not a JSON object");
  const uint64_t data_bytes = h.file_bytes - h.data_start;
  for (const auto& [name, v] : j.items()) {
    if (name == "__metadata__") {
      h.metadata = v;
      continue;
    }
    SafetensorsEntry e;
    e.name = name;
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets") ||
        !v["dtype"].is_string() || !v["shape"].is_array() || !v["data_offsets"].is_array() ||
        v["data_offsets"].size() != 2)
      user_error(path, ": corrupt safetensors header: tensor '", name,
                 "' needs dtype (string), shape (array) and data_offsets ([begin, end])");
    e.dtype = v["dtype"].get<std::string>();
    if (safetensors_dtype_bytes(e.dtype) == 0)
      user_error(path, ": tensor '", name, "' has dtype ", e.dtype, ", which is not supported (BF16, F16, F32 are)");
    for (const auto& d : v["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0)
        user_error(path, ": corrupt safetensors header: tensor '", name, "' has shape ", v["shape"].dump());
      e.shape.push_back(d.get<int64_t>());
    }
    for (const auto& o : v["data_offsets"])
      if (!o.is_number_unsigned() && !(o.is_number_integer() && o.get<int64_t>() >= 0))
        user_error(path, ": corrupt safetensors header: tensor '", name, "' has data_offsets ",
                   v["data_offsets"].dump());
    e.begin = v["data_offsets"][0].get<uint64_t>();
    e.end = v["data_offsets"][1].get<uint64_t>();
    if (e.end < e.begin || e.end > data_bytes)
      user_error(path, ": tensor '", name, "' has data_offsets [", e.begin, ", ", e.end,
                 "] out of range (the data section has ", data_bytes, " bytes)");
    if (e.end - e.begin != uint64_t(numel_of(e.shape)) * safetensors_dtype_bytes(e.dtype))
      user_error(path, ": tensor '", name, "' has data_offsets [", e.begin, ", ", e.end, "] (", e.end - e.begin,
                 " bytes) but shape ", shape_text(e.shape), " of ", e.dtype, " needs ",
                 uint64_t(numel_of(e.shape)) * safetensors_dtype_bytes(e.dtype), " bytes");
    h.entries.push_back(std::move(e));
  }
  std::sort(h.entries.begin(), h.entries.end(),
            [](const SafetensorsEntry& a, const SafetensorsEntry& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < h.entries.size(); ++i)
    if (h.entries[i].begin < h.entries[i - 1].end && h.entries[i].end > h.entries[i].begin)
      user_error(path, ": corrupt safetensors header: tensors '", h.entries[i - 1].name, "' and '",
                 h.entries[i].name, "' overlap");
  return h;
}

std::vector<float> read_safetensors_tensor(const SafetensorsHeader& h, const SafetensorsEntry& e) {
  const size_t n = size_t(numel_of(e.shape));
  std::vector<float> out(n);
  std::ifstream in(h.path, std::ios::binary);
  if (!in) user_error("cannot read file '", h.path, "': ", std::strerror(errno));
  in.seekg(std::streamoff(h.data_start + e.begin));
  if (e.dtype == "F32") {
    in.read(reinterpret_cast<char*>(out.data()), std::streamsize(n * 4));
  } else {
    std::vector<uint16_t> raw(n);
    in.read(reinterpret_cast<char*>(raw.data()), std::streamsize(n * 2));
    if (e.dtype == "BF16")
      for (size_t i = 0; i < n; ++i) out[i] = bf16_to_float(raw[i]);
    else
      for (size_t i = 0; i < n; ++i) out[i] = f16_to_float(raw[i]);
  }
  if (!in) user_error(h.path, ": truncated: cannot read tensor '", e.name, "'");
  return out;
}

std::vector<HostTensor> read_safetensors(const std::string& path) {
  const SafetensorsHeader h = read_safetensors_header(path);
  std::vector<HostTensor> out;
  for (const auto& e : h.entries) {
    if (e.shape.size() > size_t(Shape::kMaxDims))
      user_error(path, ": tensor '", e.name, "' has ", e.shape.size(), " dimensions (at most 4 supported)");
    HostTensor t;
    t.name = e.name;
    for (int64_t d : e.shape) t.shape.dims[t.shape.ndim++] = d;
    t.data = read_safetensors_tensor(h, e);
    out.push_back(std::move(t));
  }
  return out;
}

void write_safetensors(const std::string& path, const std::vector<const HostTensor*>& tensors,
                       const std::string& dtype) {
  const size_t esize = safetensors_dtype_bytes(dtype);
  if (dtype != "F32" && dtype != "BF16") user_error("safetensors export: dtype '", dtype, "' (F32 or BF16)");
  nlohmann::json header = nlohmann::json::object();
  header["__metadata__"] = {{"format", "pt"}};
  uint64_t off = 0;
  for (const HostTensor* t : tensors) {
    const uint64_t bytes = t->data.size() * esize;
    LTRAIN_CHECK(int64_t(t->data.size()) == t->shape.numel(), "tensor " << t->name << " size/shape mismatch");
    header[t->name] = {{"dtype", dtype}, {"shape", safetensors_shape(t->shape)}, {"data_offsets", {off, off + bytes}}};
    off += bytes;
  }
  std::string text = header.dump();
  while ((8 + text.size()) % 8 != 0) text.push_back(' ');
  unsigned char lenb[8];
  for (int i = 0; i < 8; ++i) lenb[i] = (uint64_t(text.size()) >> (8 * i)) & 0xffu;

  write_file_atomic(path, [&](FILE* f) {
    bool ok = std::fwrite(lenb, 1, 8, f) == 8 && std::fwrite(text.data(), 1, text.size(), f) == text.size();
    std::vector<uint16_t> buf;
    for (const HostTensor* t : tensors) {
      if (!ok) break;
      if (dtype == "F32") {
        ok = t->data.empty() || std::fwrite(t->data.data(), 4, t->data.size(), f) == t->data.size();
        continue;
      }
      constexpr size_t kChunk = 1 << 20;
      for (size_t i = 0; ok && i < t->data.size(); i += kChunk) {
        const size_t n = std::min(kChunk, t->data.size() - i);
        buf.resize(n);
        for (size_t k = 0; k < n; ++k) buf[k] = float_to_bf16(t->data[i + k]);
        ok = std::fwrite(buf.data(), 2, n, f) == n;
      }
    }
    return ok;
  });
}

}  // namespace ltrain
