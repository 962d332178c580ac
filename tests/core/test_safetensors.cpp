#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>

#include "core/core.h"
#include "test_util.h"

using namespace collage;

namespace {
std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}
void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}
std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
}  // namespace

TEST(Safetensors, RoundTripAllDtypes) {
  const auto dir = test::temp_dir("st_roundtrip");
  std::map<std::string, at::Tensor> t{
      {"f32", torch::randn({3, 4})},
      {"f16", torch::randn({5}).to(at::kHalf)},
      {"bf16", torch::randn({2, 2}).to(at::kBFloat16)},
      {"i64", torch::arange(7, at::kLong)},
      {"u8", torch::arange(9, at::kByte).reshape({3, 3})},
      {"scalar", torch::scalar_tensor(2.5)},
      {"empty", torch::zeros({0, 3})},
  };
  save_safetensors(dir + "/a.safetensors", t, {{"format", "pt"}});
  auto file = SafetensorsFile::open(dir + "/a.safetensors");
  EXPECT_EQ(file->metadata().at("format"), "pt");
  for (const auto& [name, ref] : t) {
    auto got = file->tensor(name);
    EXPECT_EQ(got.scalar_type(), ref.scalar_type()) << name;
    EXPECT_TRUE(torch::equal(got, ref)) << name;
  }
  // Views share the mapping and keep it alive after the file object is gone.
  auto v = file->view("f32");
  file.reset();
  EXPECT_TRUE(torch::equal(v, t["f32"]));
}

TEST(Safetensors, ReadsGoldenFile) {
  auto f = SafetensorsFile::open(test::golden("vae/cases.safetensors"));
  EXPECT_EQ(f->metadata().at("generator"), "golden-data");
  EXPECT_EQ(f->entry("sq.image").shape, (std::vector<int64_t>{1, 3, 32, 32}));
}

TEST(Safetensors, TruncatedFileNamesTensorAndFile) {
  const auto dir = test::temp_dir("st_trunc");
  save_safetensors(dir + "/ok.safetensors", {{"weight", torch::ones({64})}});
  auto bytes = read_bytes(dir + "/ok.safetensors");
  write_bytes(dir + "/cut.safetensors", bytes.substr(0, bytes.size() - 10));
  auto msg = message_of([&] { SafetensorsFile::open(dir + "/cut.safetensors"); });
  EXPECT_NE(msg.find("cut.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'weight'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
}

TEST(Safetensors, CorruptHeadersAreClearErrors) {
  const auto dir = test::temp_dir("st_corrupt");
  write_bytes(dir + "/tiny.safetensors", "abc");
  EXPECT_NE(message_of([&] { SafetensorsFile::open(dir + "/tiny.safetensors"); }).find("shorter than"),
            std::string::npos);
  std::string huge(8, '\xff');
  write_bytes(dir + "/huge.safetensors", huge + "{}");
  EXPECT_NE(message_of([&] { SafetensorsFile::open(dir + "/huge.safetensors"); }).find("header length"),
            std::string::npos);
  std::string json = "{not json}";
  std::string len(8, '\0');
  len[0] = static_cast<char>(json.size());
  write_bytes(dir + "/badjson.safetensors", len + json);
  EXPECT_NE(message_of([&] { SafetensorsFile::open(dir + "/badjson.safetensors"); }).find("invalid JSON"),
            std::string::npos);
  json = R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,12]}})";
  len.assign(8, '\0');
  len[0] = static_cast<char>(json.size());
  write_bytes(dir + "/badrange.safetensors", len + json + std::string(16, '\0'));
  auto msg = message_of([&] { SafetensorsFile::open(dir + "/badrange.safetensors"); });
  EXPECT_NE(msg.find("does not match dtype F32 and shape [4]"), std::string::npos) << msg;
  EXPECT_NE(message_of([&] { SafetensorsFile::open(dir + "/missing.safetensors"); }).find("cannot open"),
            std::string::npos);
}

TEST(Json, ErrorsNameFileAndKey) {
  const auto dir = test::temp_dir("json");
  write_bytes(dir + "/c.json", R"({"a": 1, "b": "text", "_meta": 0, "extra": 2})");
  auto j = read_json_file(dir + "/c.json");
  JsonReader r(j, dir + "/c.json");
  EXPECT_EQ(r.get<int>("a"), 1);
  EXPECT_EQ(r.get<int>("zz", 5), 5);
  auto msg = message_of([&] { r.get<int>("b"); });
  EXPECT_NE(msg.find("'b'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("c.json"), std::string::npos) << msg;
  EXPECT_NE(message_of([&] { r.get<int>("nope"); }).find("required key is missing"), std::string::npos);
  EXPECT_EQ(r.unused_keys(), std::vector<std::string>{"extra"});
  write_bytes(dir + "/bad.json", "{\"a\": ");
  EXPECT_NE(message_of([&] { read_json_file(dir + "/bad.json"); }).find("invalid JSON"), std::string::npos);
}

TEST(Image, WriteReadRoundTrip) {
  const auto dir = test::temp_dir("image");
  auto img = torch::rand({4, 5, 7});
  write_image(dir + "/x.png", img);
  EXPECT_TRUE(image_has_alpha(dir + "/x.png"));
  auto back = read_image(dir + "/x.png", true);
  EXPECT_EQ(back.sizes(), img.sizes());
  EXPECT_LE((back - img).abs().max().item<double>(), 0.5 / 255 + 1e-6);
  EXPECT_EQ(read_image(dir + "/x.png").size(0), 3);
  EXPECT_THROW(read_image(dir + "/none.png"), Error);
}
