// A thin RAII layer over the HDF5 C API (internal to the runner).
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <string>
#include <vector>

#include "core/core.h"

namespace collage::runner::h5 {

// An owned hid_t closed with the right H5*close.
class Handle {
 public:
  Handle() = default;
  explicit Handle(hid_t id) : id_(id) {}
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  Handle(Handle&& o) noexcept : id_(o.id_) { o.id_ = -1; }
  Handle& operator=(Handle&& o) noexcept {
    if (this != &o) {
      close();
      id_ = o.id_;
      o.id_ = -1;
    }
    return *this;
  }
  ~Handle() { close(); }
  hid_t id() const { return id_; }
  operator hid_t() const { return id_; }
  bool valid() const { return id_ >= 0; }
  void close();

 private:
  hid_t id_ = -1;
};

// Silences HDF5's automatic error printing (errors become collage::Error).
void quiet_errors();

Handle create_file(const std::string& path);                    // truncates
Handle open_file(const std::string& path, bool write);
// Read-only without HDF5's file lock: a reader (`collage status`) never makes a writer's open fail. The caller
// must tolerate reading a file in the middle of a write (errors, or an item seen as incomplete).
Handle open_file_unlocked(const std::string& path);
bool is_hdf5(const std::string& path);

bool exists(hid_t loc, const std::string& path);               // a link at `path` (each level checked)
Handle open_group(hid_t loc, const std::string& path);
Handle ensure_group(hid_t loc, const std::string& path);       // creates intermediate groups
void remove(hid_t loc, const std::string& path);               // unlinks when present
std::vector<std::string> children(hid_t loc, const std::string& group);  // sorted names

// Attributes (replaced when present).
void set_attr(hid_t obj, const std::string& name, const std::string& value);
void set_attr(hid_t obj, const std::string& name, int64_t value);
void set_attr(hid_t obj, const std::string& name, double value);
bool has_attr(hid_t obj, const std::string& name);
std::string attr_string(hid_t obj, const std::string& name);
int64_t attr_int(hid_t obj, const std::string& name);

// Datasets.
void write_double(hid_t loc, const std::string& name, double value);  // scalar
void write_doubles(hid_t loc, const std::string& name, const std::vector<double>& values);
void write_int64s(hid_t loc, const std::string& name, const std::vector<int64_t>& values);
void write_strings(hid_t loc, const std::string& name, const std::vector<std::string>& values);  // vlen utf-8
void write_array(hid_t loc, const std::string& name, hid_t mem_type, const std::vector<hsize_t>& dims,
                 const void* data, bool compress = true);
double read_double(hid_t loc, const std::string& name);
std::vector<double> read_doubles(hid_t loc, const std::string& name);
std::vector<int64_t> read_int64s(hid_t loc, const std::string& name);
std::vector<std::string> read_strings(hid_t loc, const std::string& name);
std::vector<hsize_t> dataset_dims(hid_t loc, const std::string& name);  // its shape
// Reads the whole dataset converted to `mem_type` into `data` (sized by the caller from dataset_dims).
void read_array(hid_t loc, const std::string& name, hid_t mem_type, void* data);

}  // namespace collage::runner::h5
