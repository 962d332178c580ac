// safetensors reading (memory-mapped, zero-copy views) and writing.
// Format: u64 little-endian header length N, N bytes of JSON, then the raw tensor bytes.
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace collage {

struct SafetensorsEntry {
  std::string name;
  std::string dtype;             // "F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL"
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;   // byte offsets relative to the data section
};

class SafetensorsFile {
 public:
  // Maps the file and validates the header (sizes, offsets, dtypes). Throws collage::Error naming the
  // file and the offending tensor on any corruption or truncation.
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  // Tensor names in file order (sorted, as writers emit them).
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  const SafetensorsEntry& entry(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // Zero-copy CPU tensor over the mapped bytes (read-only memory: do not write into it). The
  // mapping stays alive as long as any returned tensor does.
  at::Tensor view(const std::string& name) const;
  // An owned copy (one copy, straight from the mapping).
  at::Tensor tensor(const std::string& name) const { return view(name).clone(); }

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  size_t data_offset_ = 0;
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
  std::weak_ptr<SafetensorsFile> self_;
};

// Loads every tensor of a file as owned tensors.
std::map<std::string, at::Tensor> load_safetensors(const std::string& path);

// Writes tensors (any layout; written contiguous, little-endian) sorted by name.
void save_safetensors(const std::string& path, const std::map<std::string, at::Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// dtype string <-> torch scalar type.
at::ScalarType safetensors_dtype_to_scalar(const std::string& dtype);
std::string scalar_to_safetensors_dtype(at::ScalarType type);

}  // namespace collage
