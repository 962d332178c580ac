#include "core/json.h"

#include <fstream>
#include <sstream>

namespace collage {

Json read_json_file(const std::string& path) {
  std::ifstream in(path);
  COLLAGE_CHECK_AT(in.good(), path, "", "cannot open JSON file (missing?)");
  std::stringstream buffer;
  buffer << in.rdbuf();
  try {
    return Json::parse(buffer.str(), nullptr, true, /*ignore_comments=*/true);
  } catch (const Json::parse_error& e) {
    throw Error(fmt::format("invalid JSON: {}", e.what()), path);
  }
}

bool json_flag(const Json& object, const std::string& key, bool* has_key) {
  const bool has = object.is_object() && object.contains(key);
  if (has_key) *has_key = has;
  if (!has) return false;
  const Json& v = object[key];
  return (v.is_boolean() && v.get<bool>()) || (v.is_number() && v.get<double>() != 0);
}

void write_json_file(const std::string& path, const Json& value, int indent) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    COLLAGE_CHECK_AT(out.good(), path, "", "cannot open for writing");
    out << value.dump(indent) << "\n";
    COLLAGE_CHECK_AT(out.good(), path, "", "write failed");
  }
  COLLAGE_CHECK_AT(std::rename(tmp.c_str(), path.c_str()) == 0, path, "", "cannot rename into place");
}

JsonReader::JsonReader(const Json& object, std::string file, std::string prefix)
    : object_(object), file_(std::move(file)), prefix_(std::move(prefix)) {
  if (!object_.is_object()) throw Error("expected a JSON object", file_, prefix_);
}

bool JsonReader::has(const std::string& key) const {
  auto it = object_.find(key);
  return it != object_.end() && !it->is_null();
}

std::vector<std::string> JsonReader::unused_keys() const {
  std::vector<std::string> out;
  for (auto it = object_.begin(); it != object_.end(); ++it)
    if (!it.key().empty() && it.key()[0] != '_' && !used_.count(it.key())) out.push_back(it.key());
  return out;
}

}  // namespace collage
