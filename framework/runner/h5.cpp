#include "runner/h5.h"

#include <algorithm>
#include <fstream>

namespace collage::runner::h5 {

namespace {

void check(herr_t status, const std::string& what) {
  if (status < 0) throw Error("HDF5: " + what + " failed");
}

hid_t checked(hid_t id, const std::string& what) {
  if (id < 0) throw Error("HDF5: " + what + " failed");
  return id;
}

Handle vlen_string_type() {
  Handle t(checked(H5Tcopy(H5T_C_S1), "H5Tcopy"));
  check(H5Tset_size(t, H5T_VARIABLE), "H5Tset_size");
  check(H5Tset_cset(t, H5T_CSET_UTF8), "H5Tset_cset");
  return t;
}

}  // namespace

void Handle::close() {
  if (id_ < 0) return;
  switch (H5Iget_type(id_)) {
    case H5I_FILE: H5Fclose(id_); break;
    case H5I_GROUP: H5Gclose(id_); break;
    case H5I_DATASET: H5Dclose(id_); break;
    case H5I_ATTR: H5Aclose(id_); break;
    case H5I_DATATYPE: H5Tclose(id_); break;
    case H5I_DATASPACE: H5Sclose(id_); break;
    case H5I_GENPROP_LST: H5Pclose(id_); break;
    default: break;
  }
  id_ = -1;
}

void quiet_errors() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

Handle create_file(const std::string& path) {
  quiet_errors();
  hid_t f = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  COLLAGE_CHECK_AT(f >= 0, path, "", "cannot create the HDF5 file");
  return Handle(f);
}

Handle open_file(const std::string& path, bool write) {
  quiet_errors();
  hid_t f = H5Fopen(path.c_str(), write ? H5F_ACC_RDWR : H5F_ACC_RDONLY, H5P_DEFAULT);
  COLLAGE_CHECK_AT(f >= 0, path, "", "cannot open the HDF5 file (missing, not HDF5, or damaged)");
  return Handle(f);
}

Handle open_file_unlocked(const std::string& path) {
  quiet_errors();
  Handle fapl(H5Pcreate(H5P_FILE_ACCESS));
  COLLAGE_CHECK_AT(fapl.valid() && H5Pset_file_locking(fapl, false, true) >= 0, path, "", "HDF5: cannot set up an unlocked read");
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl);
  COLLAGE_CHECK_AT(f >= 0, path, "", "cannot open the HDF5 file (missing, not HDF5, or damaged)");
  return Handle(f);
}

bool is_hdf5(const std::string& path) {
  quiet_errors();
  std::ifstream in(path);
  if (!in.good()) return false;
  return H5Fis_hdf5(path.c_str()) > 0;
}

bool exists(hid_t loc, const std::string& path) {
  std::string partial;
  size_t pos = 0;
  while (pos <= path.size()) {
    auto next = path.find('/', pos);
    if (next == std::string::npos) next = path.size();
    const std::string part = path.substr(pos, next - pos);
    if (!part.empty()) {
      partial += (partial.empty() ? "" : "/") + part;
      if (H5Lexists(loc, partial.c_str(), H5P_DEFAULT) <= 0) return false;
    }
    pos = next + 1;
  }
  return true;
}

Handle open_group(hid_t loc, const std::string& path) {
  hid_t g = H5Gopen2(loc, path.c_str(), H5P_DEFAULT);
  if (g < 0) throw Error("HDF5: no group '" + path + "'");
  return Handle(g);
}

Handle ensure_group(hid_t loc, const std::string& path) {
  if (exists(loc, path)) return open_group(loc, path);
  Handle lcpl(checked(H5Pcreate(H5P_LINK_CREATE), "H5Pcreate"));
  check(H5Pset_create_intermediate_group(lcpl, 1), "H5Pset_create_intermediate_group");
  return Handle(checked(H5Gcreate2(loc, path.c_str(), lcpl, H5P_DEFAULT, H5P_DEFAULT), "create group " + path));
}

void remove(hid_t loc, const std::string& path) {
  if (exists(loc, path)) check(H5Ldelete(loc, path.c_str(), H5P_DEFAULT), "delete " + path);
}

std::vector<std::string> children(hid_t loc, const std::string& group) {
  std::vector<std::string> out;
  if (!exists(loc, group)) return out;
  Handle g = open_group(loc, group);
  H5G_info_t info;
  check(H5Gget_info(g, &info), "H5Gget_info");
  for (hsize_t i = 0; i < info.nlinks; ++i) {
    ssize_t n = H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT);
    if (n < 0) continue;
    std::string name(static_cast<size_t>(n), '\0');
    H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, name.data(), static_cast<size_t>(n) + 1, H5P_DEFAULT);
    out.push_back(name);
  }
  std::sort(out.begin(), out.end());
  return out;
}

namespace {
Handle fresh_attr(hid_t obj, const std::string& name, hid_t type, hid_t space) {
  if (H5Aexists(obj, name.c_str()) > 0) H5Adelete(obj, name.c_str());
  return Handle(checked(H5Acreate2(obj, name.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT), "attribute " + name));
}
}  // namespace

void set_attr(hid_t obj, const std::string& name, const std::string& value) {
  Handle t = vlen_string_type();
  Handle s(checked(H5Screate(H5S_SCALAR), "H5Screate"));
  Handle a = fresh_attr(obj, name, t, s);
  const char* p = value.c_str();
  check(H5Awrite(a, t, &p), "write attribute " + name);
}

void set_attr(hid_t obj, const std::string& name, int64_t value) {
  Handle s(checked(H5Screate(H5S_SCALAR), "H5Screate"));
  Handle a = fresh_attr(obj, name, H5T_STD_I64LE, s);
  check(H5Awrite(a, H5T_NATIVE_INT64, &value), "write attribute " + name);
}

void set_attr(hid_t obj, const std::string& name, double value) {
  Handle s(checked(H5Screate(H5S_SCALAR), "H5Screate"));
  Handle a = fresh_attr(obj, name, H5T_IEEE_F64LE, s);
  check(H5Awrite(a, H5T_NATIVE_DOUBLE, &value), "write attribute " + name);
}

bool has_attr(hid_t obj, const std::string& name) { return H5Aexists(obj, name.c_str()) > 0; }

std::string attr_string(hid_t obj, const std::string& name) {
  Handle a(H5Aopen(obj, name.c_str(), H5P_DEFAULT));
  if (!a.valid()) throw Error("HDF5: no attribute '" + name + "'");
  Handle ft(H5Aget_type(a));
  if (H5Tis_variable_str(ft) > 0) {
    Handle t = vlen_string_type();
    char* p = nullptr;
    check(H5Aread(a, t, &p), "read attribute " + name);
    std::string out = p ? p : "";
    Handle s(H5Aget_space(a));
    H5Dvlen_reclaim(t, s, H5P_DEFAULT, &p);
    return out;
  }
  const size_t n = H5Tget_size(ft);
  std::string out(n, '\0');
  Handle t(H5Tcopy(H5T_C_S1));
  H5Tset_size(t, n);
  check(H5Aread(a, t, out.data()), "read attribute " + name);
  out.resize(std::min(out.size(), out.find('\0')));
  return out;
}

int64_t attr_int(hid_t obj, const std::string& name) {
  Handle a(H5Aopen(obj, name.c_str(), H5P_DEFAULT));
  if (!a.valid()) throw Error("HDF5: no attribute '" + name + "'");
  int64_t v = 0;
  check(H5Aread(a, H5T_NATIVE_INT64, &v), "read attribute " + name);
  return v;
}

void write_array(hid_t loc, const std::string& name, hid_t mem_type, const std::vector<hsize_t>& dims,
                 const void* data, bool compress) {
  if (H5Lexists(loc, name.c_str(), H5P_DEFAULT) > 0) H5Ldelete(loc, name.c_str(), H5P_DEFAULT);
  Handle s(dims.empty() ? H5Screate(H5S_SCALAR) : H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr));
  Handle dcpl(checked(H5Pcreate(H5P_DATASET_CREATE), "H5Pcreate"));
  hsize_t total = 1;
  for (auto d : dims) total *= d;
  if (compress && !dims.empty() && total >= 256) {
    check(H5Pset_chunk(dcpl, static_cast<int>(dims.size()), dims.data()), "H5Pset_chunk");
    check(H5Pset_deflate(dcpl, 4), "H5Pset_deflate");
  }
  Handle file_type(H5Tcopy(mem_type));
  if (H5Tget_class(mem_type) != H5T_STRING) H5Tset_order(file_type, H5T_ORDER_LE);
  Handle d(checked(H5Dcreate2(loc, name.c_str(), file_type, s, H5P_DEFAULT, dcpl, H5P_DEFAULT), "create dataset " + name));
  if (total > 0) check(H5Dwrite(d, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), "write dataset " + name);
}

void write_double(hid_t loc, const std::string& name, double value) {
  write_array(loc, name, H5T_NATIVE_DOUBLE, {}, &value, false);
}

void write_doubles(hid_t loc, const std::string& name, const std::vector<double>& values) {
  write_array(loc, name, H5T_NATIVE_DOUBLE, {values.size()}, values.data());
}

void write_int64s(hid_t loc, const std::string& name, const std::vector<int64_t>& values) {
  write_array(loc, name, H5T_NATIVE_INT64, {values.size()}, values.data());
}

void write_strings(hid_t loc, const std::string& name, const std::vector<std::string>& values) {
  std::vector<const char*> ptrs;
  for (const auto& v : values) ptrs.push_back(v.c_str());
  Handle t = vlen_string_type();
  write_array(loc, name, t, {values.size()}, ptrs.data());
}

namespace {
hsize_t dataset_size(hid_t d) {
  Handle s(H5Dget_space(d));
  const hssize_t n = H5Sget_simple_extent_npoints(s);
  return n < 0 ? 0 : static_cast<hsize_t>(n);
}
}  // namespace

double read_double(hid_t loc, const std::string& name) {
  Handle d(checked(H5Dopen2(loc, name.c_str(), H5P_DEFAULT), "open dataset " + name));
  double v = 0;
  check(H5Dread(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, &v), "read " + name);
  return v;
}

std::vector<double> read_doubles(hid_t loc, const std::string& name) {
  Handle d(checked(H5Dopen2(loc, name.c_str(), H5P_DEFAULT), "open dataset " + name));
  std::vector<double> v(dataset_size(d));
  if (!v.empty()) check(H5Dread(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()), "read " + name);
  return v;
}

std::vector<int64_t> read_int64s(hid_t loc, const std::string& name) {
  Handle d(checked(H5Dopen2(loc, name.c_str(), H5P_DEFAULT), "open dataset " + name));
  std::vector<int64_t> v(dataset_size(d));
  if (!v.empty()) check(H5Dread(d, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()), "read " + name);
  return v;
}

std::vector<std::string> read_strings(hid_t loc, const std::string& name) {
  Handle d(checked(H5Dopen2(loc, name.c_str(), H5P_DEFAULT), "open dataset " + name));
  const hsize_t n = dataset_size(d);
  std::vector<std::string> out;
  if (n == 0) return out;
  Handle t = vlen_string_type();
  std::vector<char*> ptrs(n, nullptr);
  check(H5Dread(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, ptrs.data()), "read " + name);
  for (auto* p : ptrs) out.emplace_back(p ? p : "");
  Handle s(H5Dget_space(d));
  H5Dvlen_reclaim(t, s, H5P_DEFAULT, ptrs.data());
  return out;
}

std::vector<hsize_t> dataset_dims(hid_t loc, const std::string& name) {
  Handle d(checked(H5Dopen2(loc, name.c_str(), H5P_DEFAULT), "open dataset " + name));
  Handle s(H5Dget_space(d));
  const int rank = H5Sget_simple_extent_ndims(s);
  std::vector<hsize_t> dims(rank > 0 ? rank : 0);
  if (rank > 0) H5Sget_simple_extent_dims(s, dims.data(), nullptr);
  return dims;
}

void read_array(hid_t loc, const std::string& name, hid_t mem_type, void* data) {
  Handle d(checked(H5Dopen2(loc, name.c_str(), H5P_DEFAULT), "open dataset " + name));
  check(H5Dread(d, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), "read " + name);
}

}  // namespace collage::runner::h5
