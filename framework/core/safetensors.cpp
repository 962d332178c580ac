#include "core/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cstring>
#include <fstream>

#include "core/error.h"

namespace collage {

namespace {

size_t dtype_size(const std::string& dtype) {
  if (dtype == "F64" || dtype == "I64" || dtype == "U64") return 8;
  if (dtype == "F32" || dtype == "I32" || dtype == "U32") return 4;
  if (dtype == "F16" || dtype == "BF16" || dtype == "I16" || dtype == "U16") return 2;
  if (dtype == "I8" || dtype == "U8" || dtype == "BOOL") return 1;
  return 0;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? "," : "") + std::to_string(s[i]);
  return out + "]";
}

}  // namespace

at::ScalarType safetensors_dtype_to_scalar(const std::string& dtype) {
  if (dtype == "F32") return at::kFloat;
  if (dtype == "F16") return at::kHalf;
  if (dtype == "BF16") return at::kBFloat16;
  if (dtype == "F64") return at::kDouble;
  if (dtype == "I64") return at::kLong;
  if (dtype == "I32") return at::kInt;
  if (dtype == "I16") return at::kShort;
  if (dtype == "I8") return at::kChar;
  if (dtype == "U8") return at::kByte;
  if (dtype == "BOOL") return at::kBool;
  throw Error(fmt::format("unsupported safetensors dtype '{}'", dtype));
}

std::string scalar_to_safetensors_dtype(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return "F32";
    case at::kHalf: return "F16";
    case at::kBFloat16: return "BF16";
    case at::kDouble: return "F64";
    case at::kLong: return "I64";
    case at::kInt: return "I32";
    case at::kShort: return "I16";
    case at::kChar: return "I8";
    case at::kByte: return "U8";
    case at::kBool: return "BOOL";
    default: throw Error(fmt::format("cannot store dtype {} in safetensors", c10::toString(type)));
  }
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  std::shared_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->self_ = file;

  int fd = ::open(path.c_str(), O_RDONLY);
  COLLAGE_CHECK_AT(fd >= 0, path, "", "cannot open file: {}", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    throw Error("cannot stat file", path);
  }
  const size_t size = static_cast<size_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    throw Error(fmt::format("not a safetensors file: {} bytes, shorter than the 8-byte header length "
                            "(truncated or empty file)", size), path);
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  COLLAGE_CHECK_AT(map != MAP_FAILED, path, "", "mmap failed: {}", std::strerror(errno));
  file->map_ = map;
  file->map_size_ = size;

  const auto* bytes = static_cast<const unsigned char*>(map);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
  COLLAGE_CHECK_AT(header_len <= size - 8 && header_len < (uint64_t(1) << 30), path, "",
                   "corrupt or truncated safetensors file: header length {} but the file has {} bytes",
                   header_len, size);
  file->data_offset_ = 8 + header_len;
  const size_t data_size = size - file->data_offset_;

  nlohmann::json header;
  try {
    header = nlohmann::json::parse(bytes + 8, bytes + 8 + header_len);
  } catch (const std::exception& e) {
    throw Error(fmt::format("corrupt safetensors header (invalid JSON): {}", e.what()), path);
  }
  COLLAGE_CHECK_AT(header.is_object(), path, "", "corrupt safetensors header: not a JSON object");

  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (it.value().is_object())
        for (auto m = it.value().begin(); m != it.value().end(); ++m)
          if (m.value().is_string()) file->metadata_[m.key()] = m.value().get<std::string>();
      continue;
    }
    const auto& v = it.value();
    SafetensorsEntry e;
    e.name = it.key();
    try {
      e.dtype = v.at("dtype").get<std::string>();
      e.shape = v.at("shape").get<std::vector<int64_t>>();
      auto offsets = v.at("data_offsets").get<std::vector<uint64_t>>();
      COLLAGE_CHECK(offsets.size() == 2, "data_offsets must have 2 entries");
      e.begin = offsets[0];
      e.end = offsets[1];
    } catch (const Error& err) {
      throw err.with_context(path, e.name);
    } catch (const std::exception& ex) {
      throw Error(fmt::format("corrupt safetensors header entry: {}", ex.what()), path, e.name);
    }
    const size_t elem = dtype_size(e.dtype);
    COLLAGE_CHECK_AT(elem != 0, path, e.name, "unsupported dtype '{}'", e.dtype);
    uint64_t numel = 1;
    for (auto d : e.shape) {
      COLLAGE_CHECK_AT(d >= 0, path, e.name, "negative dimension in shape {}", shape_str(e.shape));
      numel *= static_cast<uint64_t>(d);
    }
    COLLAGE_CHECK_AT(e.end >= e.begin && e.end - e.begin == numel * elem, path, e.name,
                     "byte range [{}, {}) does not match dtype {} and shape {} ({} bytes expected)",
                     e.begin, e.end, e.dtype, shape_str(e.shape), numel * elem);
    COLLAGE_CHECK_AT(e.end <= data_size, path, e.name,
                     "truncated file: tensor needs bytes up to {} of the data section, which has {}",
                     e.end, data_size);
    file->index_[e.name] = file->entries_.size();
    file->entries_.push_back(std::move(e));
  }
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(map_, map_size_);
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& e : entries_) out.push_back(e.name);
  return out;
}

const SafetensorsEntry& SafetensorsFile::entry(const std::string& name) const {
  auto it = index_.find(name);
  COLLAGE_CHECK_AT(it != index_.end(), path_, name, "no such tensor in file");
  return entries_[it->second];
}

at::Tensor SafetensorsFile::view(const std::string& name) const {
  const auto& e = entry(name);
  auto keep = self_.lock();
  auto* data = static_cast<char*>(map_) + data_offset_ + e.begin;
  const auto type = safetensors_dtype_to_scalar(e.dtype);
  if (e.end == e.begin) return at::empty(e.shape, at::TensorOptions().dtype(type));
  // Unaligned data (possible for odd header padding) cannot be viewed safely: copy it.
  const size_t align = dtype_size(e.dtype);
  if (reinterpret_cast<uintptr_t>(data) % align != 0) {
    auto out = at::empty(e.shape, at::TensorOptions().dtype(type));
    std::memcpy(out.data_ptr(), data, e.end - e.begin);
    return out;
  }
  return at::from_blob(
      data, e.shape, [keep](void*) mutable { keep.reset(); }, at::TensorOptions().dtype(type));
}

std::map<std::string, at::Tensor> load_safetensors(const std::string& path) {
  auto file = SafetensorsFile::open(path);
  std::map<std::string, at::Tensor> out;
  for (const auto& n : file->names()) out[n] = file->tensor(n);
  return out;
}

void save_safetensors(const std::string& path, const std::map<std::string, at::Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<at::Tensor> contiguous;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    auto c = t.detach().to(at::kCPU).contiguous();
    const uint64_t nbytes = c.numel() * c.element_size();
    header[name] = {{"dtype", scalar_to_safetensors_dtype(c.scalar_type())},
                    {"shape", c.sizes().vec()},
                    {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
    contiguous.push_back(c);
  }
  std::string text = header.dump();
  while (text.size() % 8 != 0) text.push_back(' ');
  // Per process: SLURM tasks of one sweep share a TI cache and may write the same entry at once.
  const std::string tmp = path + ".tmp" + std::to_string(getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    COLLAGE_CHECK_AT(out.good(), path, "", "cannot open for writing");
    uint64_t n = text.size();
    unsigned char len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>((n >> (8 * i)) & 0xff);
    out.write(reinterpret_cast<const char*>(len), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const auto& c : contiguous)
      out.write(static_cast<const char*>(c.data_ptr()),
                static_cast<std::streamsize>(c.numel() * c.element_size()));
    COLLAGE_CHECK_AT(out.good(), path, "", "write failed (disk full?)");
  }
  // Atomic replace: a crash mid-write never leaves a half-written file under the final name.
  COLLAGE_CHECK_AT(std::rename(tmp.c_str(), path.c_str()) == 0, path, "", "cannot rename {} into place",
                   tmp);
}

}  // namespace collage
