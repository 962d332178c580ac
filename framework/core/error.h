// One error type for the whole framework: what went wrong, in which user file, at which field.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace collage {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message, std::string file = {}, std::string field = {})
      : std::runtime_error(compose(message, file, field)),
        message_(message),
        file_(std::move(file)),
        field_(std::move(field)) {}

  // The bare message, without the "file: field:" prefix.
  const std::string& message() const { return message_; }
  // The user's file (checkpoint, config, image, ...) the error is about; may be empty.
  const std::string& file() const { return file_; }
  // The key inside it (tensor name, JSON key, CLI flag, spec token); may be empty.
  const std::string& field() const { return field_; }

  // A copy with a file and field attached (keeps existing ones when the new ones are empty).
  Error with_context(const std::string& file, const std::string& field = {}) const {
    return Error(message_, file.empty() ? file_ : file, field.empty() ? field_ : field);
  }

 private:
  static std::string compose(const std::string& message, const std::string& file,
                             const std::string& field) {
    std::string out;
    if (!file.empty()) out += file + ": ";
    if (!field.empty()) out += "'" + field + "': ";
    return out + message;
  }
  std::string message_, file_, field_;
};

}  // namespace collage

// COLLAGE_CHECK(cond, "format {}", args...): throws collage::Error with the formatted message.
#define COLLAGE_CHECK(cond, ...)                                 \
  do {                                                           \
    if (!(cond)) throw ::collage::Error(fmt::format(__VA_ARGS__)); \
  } while (0)

// COLLAGE_CHECK_AT(cond, file, field, "format {}", args...): the same, naming the user's file and field.
#define COLLAGE_CHECK_AT(cond, file, field, ...)                                  \
  do {                                                                            \
    if (!(cond)) throw ::collage::Error(fmt::format(__VA_ARGS__), (file), (field)); \
  } while (0)
