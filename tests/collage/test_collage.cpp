#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <opencv2/imgcodecs.hpp>

#include "collage/collage.h"
#include "core/core.h"
#include "models/clip_tokenizer.h"
#include "test_util.h"

using namespace collage;
namespace fs = std::filesystem;

namespace {

// A solid RGBA square of `size` pixels in `colour`, fully opaque.
at::Tensor square(int64_t size, std::array<float, 3> colour, float alpha = 1.0f) {
  auto t = at::ones({4, size, size});
  for (int k = 0; k < 3; ++k) t[k].fill_(colour[k]);
  t[3].fill_(alpha);
  return t;
}

Collage two_squares() {
  Collage c;
  c.prompt = "a red square and a blue square on a grey wall";
  c.width = c.height = 16;
  Layer bg;
  bg.text = "grey wall";
  bg.rgba = square(16, {0.5f, 0.5f, 0.5f});
  Layer a;
  a.name = "red";
  a.text = "red square";
  a.rgba = square(6, {1, 0, 0});
  a.transform.x = 2;
  a.transform.y = 3;
  a.noise_strength = 0.2;
  Layer b;
  b.name = "blue";
  b.text = "blue square";
  b.rgba = square(6, {0, 0, 1});
  b.transform.x = 5;
  b.transform.y = 6;
  b.w_pos = 0.5;
  c.layers = {bg, a, b};
  return c;
}

std::string write_collage_json(const std::string& dir, const Json& j) {
  const auto path = (fs::path(dir) / "collage.json").string();
  write_json_file(path, j);
  return path;
}

std::string base64(const std::vector<unsigned char>& bytes) {
  static const char* tbl = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    uint32_t v = (bytes[i] << 16) | (bytes[i + 1] << 8) | bytes[i + 2];
    for (int k = 3; k >= 0; --k) out += tbl[(v >> (6 * k)) & 63];
  }
  if (i < bytes.size()) {
    uint32_t v = bytes[i] << 16;
    if (i + 1 < bytes.size()) v |= bytes[i + 1] << 8;
    out += tbl[(v >> 18) & 63];
    out += tbl[(v >> 12) & 63];
    out += i + 1 < bytes.size() ? tbl[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

}  // namespace

TEST(Collage, SaveLoadRoundTrip) {
  auto dir = test::temp_dir("collage_roundtrip");
  auto c = two_squares();
  c.layers[2].polygon = {{0, 0}, {6, 0}, {0, 6}};
  c.layers[1].keep = true;
  save_collage(c, dir);
  auto back = load_collage(dir);
  EXPECT_EQ(back.prompt, c.prompt);
  EXPECT_EQ(back.width, 16);
  ASSERT_EQ(back.layers.size(), 3u);
  EXPECT_EQ(back.layers[1].text, "red square");
  EXPECT_EQ(back.layers[1].name, "red");
  EXPECT_TRUE(back.layers[1].keep);
  EXPECT_DOUBLE_EQ(back.layers[1].transform.x, 2);
  EXPECT_DOUBLE_EQ(back.layers[1].noise_strength, 0.2);
  EXPECT_DOUBLE_EQ(back.layers[2].w_pos, 0.5);
  EXPECT_EQ(back.layers[2].polygon.size(), 3u);
  EXPECT_TRUE(torch::allclose(back.layers[2].rgba, c.layers[2].rgba, 0, 1.0 / 255));
  EXPECT_TRUE(torch::allclose(flatten(back), flatten(c), 0, 1.0 / 255));  // 8-bit PNG storage
}

TEST(Collage, ValidationNamesFileAndField) {
  auto dir = test::temp_dir("collage_validation");
  auto c = two_squares();
  save_collage(c, dir);
  const Json good = read_json_file((fs::path(dir) / "collage.json").string());

  auto with = [&](const std::function<void(Json&)>& edit) {
    Json j = good;
    edit(j);
    return write_collage_json(dir, j);
  };
  auto msg = test::expect_error([&] { load_collage(with([](Json& j) { j["layers"][1]["text"] = "green circle"; })); });
  EXPECT_NE(msg.find("collage.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("layers[1].text"), std::string::npos) << msg;
  EXPECT_NE(msg.find("green circle"), std::string::npos) << msg;

  msg = test::expect_error([&] { load_collage(with([](Json& j) { j["layers"][2]["noise_strength"] = 1.5; })); });
  EXPECT_NE(msg.find("layers[2].noise_strength"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[0, 1]"), std::string::npos) << msg;

  msg = test::expect_error([&] { load_collage(with([](Json& j) { j["layers"][0]["w_neg"] = -0.1; })); });
  EXPECT_NE(msg.find("layers[0].w_neg"), std::string::npos) << msg;

  msg = test::expect_error([&] { load_collage(with([](Json& j) { j["layers"][1]["colour"] = "red"; })); });
  EXPECT_NE(msg.find("layers[1].colour"), std::string::npos) << msg;
  EXPECT_NE(msg.find("unknown field"), std::string::npos) << msg;

  msg = test::expect_error([&] { load_collage(with([](Json& j) { j["lighting"] = 1; })); });
  EXPECT_NE(msg.find("'lighting'"), std::string::npos) << msg;

  msg = test::expect_error([&] { load_collage(with([](Json& j) { j["layers"][1]["image"] = "missing.png"; })); });
  EXPECT_NE(msg.find("layers[1].image"), std::string::npos) << msg;
  EXPECT_NE(msg.find("not found"), std::string::npos) << msg;

  write_image((fs::path(dir) / "rgb.png").string(), at::rand({3, 4, 4}));
  msg = test::expect_error([&] { load_collage(with([](Json& j) { j["layers"][1]["image"] = "rgb.png"; })); });
  EXPECT_NE(msg.find("layers[1].image"), std::string::npos) << msg;
  EXPECT_NE(msg.find("alpha"), std::string::npos) << msg;

  msg = test::expect_error([&] { load_collage(with([](Json& j) { j["layers"][1]["transform"]["scale"] = 0; })); });
  EXPECT_NE(msg.find("layers[1].transform.scale"), std::string::npos) << msg;

  msg = test::expect_error([&] { load_collage(with([](Json& j) { j["layers"][1]["transform"]["skew"] = 1; })); });
  EXPECT_NE(msg.find("layers[1].transform.skew"), std::string::npos) << msg;

  msg = test::expect_error([&] { load_collage(with([](Json& j) { j["layers"][1]["w_pos"] = "high"; })); });
  EXPECT_NE(msg.find("layers[1].w_pos"), std::string::npos) << msg;

  std::ofstream((fs::path(dir) / "collage.json").string()) << "{\"prompt\": \"x\", \"layers\": [";
  msg = test::expect_error([&] { load_collage(dir); });
  EXPECT_NE(msg.find("collage.json"), std::string::npos) << msg;
}

TEST(Collage, PlacementVisibleMasksAndFlatten) {
  auto c = two_squares();
  auto placed = place_layers(c);
  ASSERT_EQ(placed.sizes(), (at::IntArrayRef{3, 4, 16, 16}));
  // Red square: 6x6 at (x=2, y=3) -> rows 3..8, columns 2..7, exactly.
  auto alpha = placed[1][3];
  EXPECT_EQ(alpha.sum().item<double>(), 36.0);
  EXPECT_EQ(alpha.slice(0, 3, 9).slice(1, 2, 8).min().item<double>(), 1.0);
  auto v = visible_masks(placed);
  // The blue square (top) hides the red one where they overlap (rows 6..8, columns 5..7).
  EXPECT_EQ(v[1].slice(0, 6, 9).slice(1, 5, 8).max().item<double>(), 0.0);
  EXPECT_EQ(v[1].sum().item<double>(), 36.0 - 9.0);
  EXPECT_EQ(v[2].sum().item<double>(), 36.0);
  EXPECT_TRUE(torch::allclose(v.sum(0), at::ones({16, 16})));  // opaque background: a partition of the canvas
  auto flat = flatten_layers(placed, c.background);
  EXPECT_FLOAT_EQ(flat[0][4][3].item<float>(), 1.0f);   // red
  EXPECT_FLOAT_EQ(flat[2][7][6].item<float>(), 1.0f);   // blue on top in the overlap
  EXPECT_FLOAT_EQ(flat[0][0][0].item<float>(), 0.5f);   // wall
  // Flatten up to layer 1 leaves the blue square out (TI's training image of layer 1).
  auto upto = flatten_layers(placed, c.background, 1);
  EXPECT_FLOAT_EQ(upto[0][7][6].item<float>(), 1.0f);
}

TEST(Collage, TransformsScaleRotateAndSoftAlpha) {
  Layer l;
  l.rgba = at::zeros({4, 8, 4});  // 4 wide, 8 tall
  l.rgba[0].fill_(1);
  l.rgba[3].fill_(1);
  l.transform.x = 10;
  l.transform.y = 10;
  l.transform.scale = 0.5;  // -> 2 wide, 4 tall at (10, 10)
  auto p = place_layer(l, 32, 32);
  EXPECT_NEAR(p[3].sum().item<double>(), 8.0, 1e-4);
  EXPECT_NEAR(p[3].slice(0, 10, 14).slice(1, 10, 12).mean().item<double>(), 1.0, 1e-5);
  // A quarter turn about the scaled centre (11, 12): the 2x4 box becomes 4x2, rows 11..12, columns 9..12.
  l.transform.rotation = 90;
  p = place_layer(l, 32, 32);
  EXPECT_NEAR(p[3].sum().item<double>(), 8.0, 1e-3);
  EXPECT_NEAR(p[3].slice(0, 11, 13).slice(1, 9, 13).mean().item<double>(), 1.0, 1e-3);
  // Colour under partial alpha is straight (not premultiplied).
  Layer soft;
  soft.rgba = square(4, {0.2f, 0.4f, 0.6f}, 0.5f);
  p = place_layer(soft, 8, 8);
  EXPECT_NEAR(p[1][1][1].item<double>(), 0.4, 1e-5);
  EXPECT_NEAR(p[3][1][1].item<double>(), 0.5, 1e-5);
  // Polygon crop: the lower-left triangle of a 8x8 square keeps about half the area.
  Layer tri;
  tri.rgba = square(8, {1, 1, 1});
  tri.polygon = {{0, 0}, {0, 8}, {8, 8}};
  p = place_layer(tri, 8, 8);
  EXPECT_NEAR(p[3].sum().item<double>(), 32.0, 3.0);
  EXPECT_GT(p[3][6][1].item<double>(), 0.9);
  EXPECT_LT(p[3][1][6].item<double>(), 0.1);
}

TEST(Collage, MaskPyramidAndNoiseMap) {
  auto c = two_squares();
  auto v = visible_masks(place_layers(c));
  MaskPyramid pyramid(v);
  const auto& m8 = pyramid.at_size(8, 8, at::kCPU);
  ASSERT_EQ(m8.sizes(), (at::IntArrayRef{3, 8, 8}));
  // Area resampling keeps each layer's share of the canvas.
  EXPECT_TRUE(torch::allclose(m8.mean({1, 2}), v.mean({1, 2}), 1e-5, 1e-6));
  EXPECT_EQ(&pyramid.at_size(8, 8, at::kCPU), &m8);  // cached
  // No blur: each layer's visible region holds its own strength, the rest the global strength.
  std::vector<double> s{0.9, 0.2, 0.6};
  auto n = noise_map(v, s, 0.7, 0.0);
  EXPECT_FLOAT_EQ(n[4][3].item<float>(), 0.2f);
  EXPECT_FLOAT_EQ(n[7][6].item<float>(), 0.6f);
  EXPECT_FLOAT_EQ(n[0][0].item<float>(), 0.9f);
  // Without a background layer, uncovered pixels take b.
  auto n2 = noise_map(v.slice(0, 1, 3), {0.2, 0.6}, 0.7, 0.0);
  EXPECT_FLOAT_EQ(n2[0][0].item<float>(), 0.7f);
  // The default blur is 10 px at 512 and scales with the canvas.
  EXPECT_DOUBLE_EQ(default_blur_sigma(512, 512), 10.0);
  EXPECT_DOUBLE_EQ(default_blur_sigma(64, 64), 1.25);
  auto blurred = noise_map(v, s, 0.7, 1.5);
  EXPECT_GT(blurred[4][3].item<float>(), 0.2f);  // neighbours leak in
  EXPECT_NEAR(blurred.mean().item<double>(), n.mean().item<double>(), 0.02);  // mass roughly kept
}

TEST(Collage, LayerTokenPositions) {
  auto tok = ClipTokenizer::from_folder(test::golden("tokenizer"));
  // bos=0: "a"=1 "red"=2 "circle"=3 "and"=4 "a"=5 "red"=6 "star"=7 "on"=8 "grass"=9
  auto pos = layer_token_positions(tok, "a red circle and a red star on grass", {"red circle", "red star", "grass", ""});
  EXPECT_EQ(pos[0], (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(pos[1], (std::vector<int64_t>{6, 7}));
  EXPECT_EQ(pos[2], (std::vector<int64_t>{9}));
  EXPECT_TRUE(pos[3].empty());
  // The same text twice: the second layer takes the second occurrence.
  pos = layer_token_positions(tok, "a red star and a red star", {"red star", "red star"});
  EXPECT_EQ(pos[0], (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(pos[1], (std::vector<int64_t>{6, 7}));
  auto msg = test::expect_error([&] { layer_token_positions(tok, "a red circle", {"circ"}, "c.json"); });
  EXPECT_NE(msg.find("layers[0].text"), std::string::npos) << msg;
  std::string long_prompt;
  for (int i = 0; i < 80; ++i) long_prompt += "word ";
  long_prompt += "red star";
  msg = test::expect_error([&] { layer_token_positions(tok, long_prompt, {"red star"}, "c.json"); });
  EXPECT_NE(msg.find("token limit"), std::string::npos) << msg;
}

TEST(Collage, ImportsTheAuthorsDemoLayers) {
  // The library side of `collage import-demo` (tests/cli/test_import_demo.cpp checks the placement end to end).
  auto dir = test::temp_dir("collage_demo");
  write_image((fs::path(dir) / "cat.png").string(), square(8, {1, 0.5f, 0}));
  cv::Mat m(4, 4, CV_8UC3, cv::Scalar(255, 0, 0));  // BGR: blue, no alpha (a photo)
  std::vector<unsigned char> png;
  cv::imencode(".png", m, png);
  Json demo = {{"prompt", "a cat sitting on a blue table"},
               {"numInferenceSteps", 50},
               {"seed", "12"},
               {"layers",
                {{{"id", 0},
                  {"key", "table"},
                  {"originalImgUrl", "data:image/png;base64," + base64(png)},
                  {"textPrompt", "blue table"},
                  {"cacStrength", 0.0},
                  {"negativeStrength", 1.0},
                  {"noiseStrength", 0.9},
                  {"cannyStrength", 0.3},
                  {"transform", {{"position", {{"x", 0.25}, {"y", 0.5}}}, {"scale", 2.0 / 512}, {"rotation", 0}}},
                  {"polygon", Json::array()}},
                 {{"id", 1},
                  {"key", "cat"},
                  {"originalImgUrl", "cat.png"},
                  {"textPrompt", "cat"},
                  {"cacStrength", 0.6},
                  {"negativeStrength", 0.8},
                  {"noiseStrength", 0.3},
                  {"transform", {{"position", {{"x", 0.5}, {"y", 0.25}}}, {"scale", 1.0 / 512}, {"rotation", 15}}},
                  {"polygon", {{{"x", 0}, {"y", 0}}, {{"x", 1}, {"y", 0}}, {{"x", 0}, {"y", 1}}}},
                  {"wordEmbedding", nullptr}}}}};
  const auto path = (fs::path(dir) / "demo.json").string();
  write_json_file(path, demo);
  auto collages = import_demo_collages(path);
  ASSERT_EQ(collages.size(), 1u);
  auto& c = collages[0];
  EXPECT_EQ(c.width, 512);
  ASSERT_EQ(c.layers.size(), 2u);
  EXPECT_EQ(c.layers[0].name, "table");
  EXPECT_DOUBLE_EQ(c.layers[0].noise_strength, 0.9);
  EXPECT_DOUBLE_EQ(c.layers[0].control_strength, 0.3);
  // Their geometry baked in: the 4x4 image at 2 px per pixel is 8x8, placed at (128, 256), opaque.
  EXPECT_EQ(c.layers[0].rgba.size(2), 8);
  EXPECT_DOUBLE_EQ(c.layers[0].transform.x, 128);
  EXPECT_DOUBLE_EQ(c.layers[0].transform.y, 256);
  EXPECT_DOUBLE_EQ(c.layers[0].transform.scale, 1);
  EXPECT_NEAR(c.layers[0].rgba[2][0][0].item<double>(), 1.0, 1e-6);  // blue decoded from the data URL
  EXPECT_NEAR(c.layers[0].rgba[3].min().item<double>(), 1.0, 1e-6);  // no alpha -> opaque
  EXPECT_DOUBLE_EQ(c.layers[1].w_pos, 0.6);
  EXPECT_DOUBLE_EQ(c.layers[1].w_neg, 0.8);
  EXPECT_DOUBLE_EQ(c.layers[1].transform.rotation, 15);
  EXPECT_EQ(c.layers[1].polygon.size(), 4u);  // the rotation's clip to its box
  // The triangle's mask: pixel (j, i) is in when j + i < 8 (the points (0,0), (8,0), (0,8)).
  EXPECT_NEAR(c.layers[1].rgba[3][0][6].item<double>(), 1.0, 1e-6);
  EXPECT_NEAR(c.layers[1].rgba[3][7][7].item<double>(), 0.0, 1e-6);
  EXPECT_EQ(c.meta["seed"], 12);
  EXPECT_EQ(sampling_defaults(c).steps.value_or(0), 50);
  EXPECT_FALSE(sampling_defaults(c).guidance_scale.has_value());
  auto placed = place_layers(c);
  EXPECT_NEAR(placed[0][3].sum().item<double>(), 64.0, 1e-3);
  // It saves as a regular collage.
  save_collage(c, (fs::path(dir) / "imported").string());
  auto back = load_collage((fs::path(dir) / "imported").string());
  EXPECT_EQ(back.layers[1].text, "cat");
  EXPECT_DOUBLE_EQ(back.layers[0].control_strength, 0.3);

  demo["layers"][1]["textPrompt"] = "dog";
  write_json_file(path, demo);
  auto msg = test::expect_error([&] { import_demo_collages(path); });
  EXPECT_NE(msg.find("layers[1].text"), std::string::npos) << msg;
  demo["layers"][1]["textPrompt"] = "cat";
  demo["layers"][1]["originalImgUrl"] = "https://example.com/cat.png";
  write_json_file(path, demo);
  msg = test::expect_error([&] { import_demo_collages(path); });
  EXPECT_NE(msg.find("layers[1].originalImgUrl"), std::string::npos) << msg;
  DemoImportOptions with_images;
  with_images.images_dir = dir;
  EXPECT_EQ(import_demo_collages(path, with_images)[0].layers.size(), 2u);  // found by the URL's file name
  demo["layers"][1]["polygon"] = {{{"x", 0.1}, {"y", 0.1}}, {{"x", 0.11}, {"y", 0.1}}, {{"x", 0.1}, {"y", 0.11}}};
  write_json_file(path, demo);
  msg = test::expect_error([&] { import_demo_collages(path, with_images); });
  EXPECT_NE(msg.find("covers no pixel"), std::string::npos) << msg;
  demo["seed"] = "forty";
  write_json_file(path, demo);
  msg = test::expect_error([&] { import_demo_collages(path, with_images); });
  EXPECT_NE(msg.find("'seed'"), std::string::npos) << msg;
}
