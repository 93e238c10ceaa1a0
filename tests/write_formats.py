#!/usr/bin/python3
"""Independent writer of the token-data formats ltrain reads in place, for the tests.

Written from the published format descriptions, not from ltrain's C++:
  - Megatron-LM / GPT-NeoX indexed dataset (megatron/core/datasets/indexed_dataset.py):
      PREFIX.bin: the tokens of every sequence, back to back, in the index's dtype.
      PREFIX.idx: b"MMIDIDX\\x00\\x00", <Q version 1, <B dtype code, <Q sequence count,
                  <Q document-index count, int32 sequence lengths, int64 sequence byte offsets,
                  int64 document indices (0, then the sequence count after each document).
      dtype codes: 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64, 7 float32, 8 uint16.
  - llm.c token shard (dev/data/data_common.py): 256 int32 header (magic, version, token count,
      zeros), then the tokens: "gpt-2" = magic 20240520, version 1, uint16 tokens;
      "llama-3" = magic 20240801, version 7, uint32 tokens.

Usage: write_formats.py SPEC.json, where SPEC is {"files": [ITEM, ...]} and ITEM one of
  {"kind": "megatron", "prefix": P, "dtype": "uint16", "documents": [DOC, ...]}
      DOC: a list of token ids (one sequence), or a list of sequences (lists of ids)
  {"kind": "llmc", "path": F, "variant": "gpt-2" | "llama-3", "tokens": [ids]}
  {"kind": "json", "path": F, "content": {...}}
"""
import json
import os
import struct
import sys

import numpy as np

MEGATRON_CODES = {"uint8": 1, "int8": 2, "int16": 3, "int32": 4, "int64": 5, "float64": 6, "float32": 7,
                  "uint16": 8}
LLMC_VARIANTS = {"gpt-2": (20240520, 1, np.uint16), "llama-3": (20240801, 7, np.uint32)}


def write_megatron(prefix, dtype_name, documents):
    dtype = np.dtype(dtype_name).newbyteorder("<")
    lengths, doc_index = [], [0]
    with open(prefix + ".bin", "wb") as f:
        for doc in documents:
            seqs = [doc] if (len(doc) == 0 or isinstance(doc[0], int)) else doc
            for seq in seqs:
                arr = np.array(seq, dtype=dtype)
                f.write(arr.tobytes())
                lengths.append(len(seq))
            doc_index.append(len(lengths))
    pointers, offset = [], 0
    for n in lengths:
        pointers.append(offset)
        offset += n * dtype.itemsize
    with open(prefix + ".idx", "wb") as f:
        f.write(b"MMIDIDX\x00\x00")
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<B", MEGATRON_CODES[dtype_name]))
        f.write(struct.pack("<Q", len(lengths)))
        f.write(struct.pack("<Q", len(doc_index)))
        f.write(np.array(lengths, dtype="<i4").tobytes())
        f.write(np.array(pointers, dtype="<i8").tobytes())
        f.write(np.array(doc_index, dtype="<i8").tobytes())


def write_llmc(path, variant, tokens):
    magic, version, dtype = LLMC_VARIANTS[variant]
    header = np.zeros(256, dtype="<i4")
    header[0], header[1], header[2] = magic, version, len(tokens)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.array(tokens, dtype=np.dtype(dtype).newbyteorder("<")).tobytes())


def main():
    spec = json.load(open(sys.argv[1]))
    for item in spec["files"]:
        kind = item["kind"]
        os.makedirs(os.path.dirname(item.get("prefix") or item["path"]) or ".", exist_ok=True)
        if kind == "megatron":
            write_megatron(item["prefix"], item.get("dtype", "uint16"), item["documents"])
        elif kind == "llmc":
            write_llmc(item["path"], item.get("variant", "gpt-2"), item["tokens"])
        elif kind == "json":
            with open(item["path"], "w") as f:
                json.dump(item["content"], f)
        else:
            raise SystemExit(f"unknown kind {kind}")


if __name__ == "__main__":
    main()
