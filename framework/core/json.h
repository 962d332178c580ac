// JSON files with errors that name the file and key.
#pragma once

#include <nlohmann/json.hpp>

#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"

namespace collage {

using Json = nlohmann::json;

// Parses a JSON file; a missing file or a syntax error throws collage::Error naming the path.
Json read_json_file(const std::string& path);
void write_json_file(const std::string& path, const Json& value, int indent = 2);

// A flag of a free-form object such as a layer's meta: true when `object` has `key` set to true or to a
// non-zero number. has_key (optional) tells whether the key is there at all.
bool json_flag(const Json& object, const std::string& key, bool* has_key = nullptr);

// Reads typed fields of one JSON object, remembering which keys were used, so that a config loader can
// report the unknown ones. Errors name the file and the key.
class JsonReader {
 public:
  JsonReader(const Json& object, std::string file, std::string prefix = {});

  bool has(const std::string& key) const;
  template <typename T>
  T get(const std::string& key) {  // required
    used_.insert(key);
    auto it = object_.find(key);
    if (it == object_.end() || it->is_null())
      throw Error("required key is missing", file_, prefix_ + key);
    return convert<T>(*it, key);
  }
  template <typename T>
  T get(const std::string& key, const T& fallback) {  // optional (null counts as absent)
    used_.insert(key);
    auto it = object_.find(key);
    if (it == object_.end() || it->is_null()) return fallback;
    return convert<T>(*it, key);
  }
  // Marks keys as known without reading them (metadata such as "_diffusers_version").
  void ignore(const std::vector<std::string>& keys) { used_.insert(keys.begin(), keys.end()); }
  // Keys present in the object but never read or ignored; keys starting with '_' are never listed.
  std::vector<std::string> unused_keys() const;
  const std::string& file() const { return file_; }
  const Json& object() const { return object_; }

 private:
  template <typename T>
  T convert(const Json& v, const std::string& key) const {
    try {
      return v.get<T>();
    } catch (const std::exception& e) {
      throw Error(fmt::format("wrong type: {} ({})", v.dump(), e.what()), file_, prefix_ + key);
    }
  }
  const Json& object_;
  std::string file_, prefix_;
  std::set<std::string> used_;
};

}  // namespace collage
