// ShapesWorld: renderer determinism and consistency, captions, sampling options, and the analyser's
// accuracy on rendered (and degraded) scenes.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <set>

#include "datasets/shapesworld/shapesworld.h"
#include "test_util.h"

using namespace collage;
using namespace collage::shapesworld;

namespace {

bool contains(const std::string& text, const std::string& word) { return text.find(word) != std::string::npos; }

double iou(const at::Tensor& a, const at::Tensor& b) {
  const auto x = a.ge(0.5), y = b.ge(0.5);
  const double uni = (x | y).sum().item<double>();
  return uni > 0 ? (x & y).sum().item<double>() / uni : 1.0;
}

// What the analyser gets right on a set of scenes, over objects at least 40 % visible.
struct Score {
  int objects = 0, correct = 0, pattern_correct = 0, scenes = 0, lighting_correct = 0;
  int detections = 0, spurious = 0;  // detections overlapping no object's visible pixels by IoU >= 0.3
  double iou_sum = 0;
  double accuracy() const { return objects ? static_cast<double>(correct) / objects : 0; }
  double mean_iou() const { return objects ? iou_sum / objects : 0; }
  double pattern_accuracy() const { return objects ? static_cast<double>(pattern_correct) / objects : 0; }
};

void score_scene(const Rendered& r, const SceneSpec& scene, const Analysis& a, Score& s) {
  ++s.scenes;
  s.lighting_correct += a.background == scene.background && a.tint == scene.tint;
  for (const auto& o : r.objects) {
    const double full = o.full_mask.sum().item<double>();
    if (full <= 0 || o.visible_mask.sum().item<double>() < 0.4 * full) continue;
    ++s.objects;
    const Detection* best = nullptr;
    double best_iou = 0;
    for (const auto& d : a.objects) {
      const double v = iou(d.mask, o.visible_mask);
      if (v > best_iou) best_iou = v, best = &d;
    }
    s.iou_sum += best_iou;
    if (best && best->shape == o.spec.shape && best->colour == o.spec.colour) ++s.correct;
    if (best && best->pattern == o.spec.pattern) ++s.pattern_correct;
  }
  for (const auto& d : a.objects) {
    ++s.detections;
    bool matched = false;
    for (const auto& o : r.objects) matched |= iou(d.mask, o.visible_mask) >= 0.3;
    s.spurious += !matched;
  }
}

SampleOptions crowded() {
  SampleOptions o;
  o.min_visible = 0.3;  // more occlusion than the default
  return o;
}

// What a generated image may look like: blurred, noisy, colour-drifted, 8-bit.
at::Tensor degrade(const at::Tensor& image, uint64_t seed) {
  at::manual_seed(seed);
  auto x = image.unsqueeze(0);
  auto k = at::tensor({1.0f, 2.0f, 1.0f});
  k = (k.unsqueeze(0) * k.unsqueeze(1)) / 16.0f;
  x = at::conv2d(at::replication_pad2d(x, {1, 1, 1, 1}), k.expand({3, 1, 3, 3}).contiguous(), c10::nullopt, at::IntArrayRef{1}, at::IntArrayRef{0}, at::IntArrayRef{1}, 3);
  x = x + at::randn_like(x) * 0.03;
  x = x * (1 + (at::rand({1, 3, 1, 1}) - 0.5) * 0.12);
  return x.clamp(0, 1).mul(255).round().div(255)[0];
}

}  // namespace

TEST(ShapesWorld, Vocabulary) {
  EXPECT_EQ(shape_names(), (std::vector<std::string>{"circle", "square", "triangle", "star"}));
  EXPECT_EQ(colour_names().size(), 8u);
  for (const char* c : {"red", "green", "blue", "yellow", "purple", "orange", "white", "black"})
    EXPECT_TRUE(contains(fmt::format("{}", fmt::join(colour_names(), ",")), c)) << c;
  EXPECT_EQ(pattern_names(), (std::vector<std::string>{"plain", "striped", "dotted"}));
  EXPECT_EQ(background_names(), (std::vector<std::string>{"sky", "grass", "sand", "water", "wall"}));
  EXPECT_EQ(tint_names(), (std::vector<std::string>{"day", "sunset", "night"}));
}

TEST(ShapesWorld, Deterministic) {
  for (uint64_t seed : {1ull, 2ull, 12345ull}) {
    const auto a = sample_scene(seed), b = sample_scene(seed);
    EXPECT_EQ(to_json(a), to_json(b));
    const auto ra = render(a, 64, 64), rb = render(b, 64, 64);
    EXPECT_TRUE(at::equal(ra.image, rb.image));
    ASSERT_EQ(ra.objects.size(), rb.objects.size());
    for (size_t i = 0; i < ra.objects.size(); ++i) {
      EXPECT_TRUE(at::equal(ra.objects[i].full_mask, rb.objects[i].full_mask));
      EXPECT_TRUE(at::equal(ra.objects[i].visible_mask, rb.objects[i].visible_mask));
    }
    EXPECT_EQ(caption(a, seed), caption(b, seed));
  }
  std::set<std::string> scenes;
  for (uint64_t seed = 0; seed < 50; ++seed) scenes.insert(to_json(sample_scene(seed)).dump());
  EXPECT_EQ(scenes.size(), 50u);
  EXPECT_FALSE(at::equal(render(sample_scene(1), 64, 64).image, render(sample_scene(2), 64, 64).image));
  // The texture variant alone changes the background.
  SceneSpec s;
  s.texture_seed = 1;
  const auto a = render_background(s, 64, 64);
  s.texture_seed = 2;
  EXPECT_GT((a - render_background(s, 64, 64)).abs().max().item<float>(), 0.01f);
}

TEST(ShapesWorld, MasksConsistent) {
  for (uint64_t seed = 0; seed < 60; ++seed) {
    const auto scene = sample_scene(seed, crowded());
    const auto r = render(scene, 64, 64);
    ASSERT_EQ(r.image.sizes(), (at::IntArrayRef{3, 64, 64}));
    EXPECT_GE(r.image.min().item<float>(), 0.0f);
    EXPECT_LE(r.image.max().item<float>(), 1.0f);
    const auto bg = render_background(scene, 64, 64);
    auto total = at::zeros({64, 64});
    for (const auto& o : r.objects) {
      EXPECT_GE(o.full_mask.min().item<float>(), 0.0f);
      EXPECT_LE(o.full_mask.max().item<float>(), 1.0f);
      EXPECT_TRUE((o.visible_mask <= o.full_mask + 1e-6).all().item<bool>());
      total += o.visible_mask;
      // The object's own pixels differ clearly from the background.
      const auto own = o.visible_mask.ge(0.99);
      ASSERT_GT(own.sum().item<int64_t>(), 0) << "seed " << seed;
      const auto diff = (r.image - bg).abs().amax(0).masked_select(own);
      EXPECT_GT(diff.mean().item<float>(), 0.12f) << "seed " << seed << " " << to_json(o.spec).dump();
    }
    EXPECT_LE(total.max().item<float>(), 1.0f + 1e-5f);
  }
}

TEST(ShapesWorld, EveryNameRenders) {
  SceneSpec scene;
  scene.light_angle_deg = 60;
  const auto backgrounds = background_names(), tints = tint_names();
  int k = 0;
  for (const auto& shape : shape_names())
    for (const auto& colour : colour_names())
      for (const auto& pattern : pattern_names()) {
        ObjectSpec o;
        o.shape = shape, o.colour = colour, o.pattern = pattern, o.size = 0.22, o.rotation_deg = 10.0 * k;
        scene.objects = {o};
        // Every object on every background renders visibly; each one is analysed on one of them.
        for (size_t b = 0; b < backgrounds.size(); ++b) {
          scene.background = backgrounds[b];
          scene.tint = tints[(k + b) % tints.size()];
          const auto r = render(scene, 64, 64);
          const auto bg = render_background(scene, 64, 64);
          // The contrast as under daylight: the tint is a per-channel multiplier of the day image.
          auto day = scene;
          day.tint = "day";
          const auto tint = bg.sum({1, 2}) / render_background(day, 64, 64).sum({1, 2});
          const auto own = r.objects[0].visible_mask.ge(0.99);
          EXPECT_GT(((r.image - bg).abs() / tint.view({3, 1, 1})).amax(0).masked_select(own).mean().item<float>(), 0.12f)
              << object_phrase(o) << " on " << scene.background;
          if (b != k % backgrounds.size()) continue;
          const auto a = analyse(r.image);
          const std::string what = object_phrase(o) + " on " + scene.background + " at " + scene.tint;
          ASSERT_EQ(a.size(), 1u) << what;
          EXPECT_EQ(a[0].shape, shape) << what;
          EXPECT_EQ(a[0].colour, colour) << what;
          EXPECT_EQ(a[0].pattern, pattern) << what;
          EXPECT_GT(iou(a[0].mask, r.objects[0].visible_mask), 0.9) << what;
        }
        ++k;
      }
  // Unnamed shades keep their colour class.
  for (const auto& colour : colour_names())
    for (double shade : {-0.2, 0.2})
      for (const auto& background : backgrounds) {
        ObjectSpec o;
        o.shape = "star", o.colour = colour, o.shade = shade, o.size = 0.22, o.pattern = "striped";
        scene.objects = {o};
        scene.background = background;
        scene.tint = "night";
        const auto a = analyse(render(scene, 64, 64).image);
        ASSERT_EQ(a.size(), 1u) << colour << " shade " << shade << " on " << background;
        EXPECT_EQ(a[0].colour, colour) << "shade " << shade << " on " << background;
        EXPECT_EQ(a[0].shape, "star") << colour << " shade " << shade << " on " << background;
      }
  // Tints colour everything: night is dark and blue, sunset warm.
  ObjectSpec white;
  white.colour = "white";
  scene.objects = {white};
  scene.background = "wall";
  std::map<std::string, at::Tensor> mean;
  for (const auto& tint : tint_names()) {
    scene.tint = tint;
    const auto r = render(scene, 64, 64);
    mean[tint] = r.image.mean({1, 2});
    // The object's own colour is tinted too.
    const auto own = r.objects[0].visible_mask.ge(0.99);
    mean[tint + "_object"] = r.image.index({at::indexing::Slice(), own}).mean(1);
  }
  EXPECT_LT(mean["night"].sum().item<float>(), 0.6f * mean["day"].sum().item<float>());
  EXPECT_GT((mean["night"][2] / mean["night"][0]).item<float>(), 1.5f * (mean["day"][2] / mean["day"][0]).item<float>());
  EXPECT_GT((mean["sunset"][0] / mean["sunset"][2]).item<float>(), 1.5f * (mean["day"][0] / mean["day"][2]).item<float>());
  EXPECT_GT((mean["sunset_object"][0] / mean["sunset_object"][2]).item<float>(), 1.5f);
  EXPECT_GT((mean["night_object"][2] / mean["night_object"][0]).item<float>(), 1.5f);
}

TEST(ShapesWorld, OneLightShadesAndCastsShadows) {
  SceneSpec scene;
  scene.background = "sand";
  ObjectSpec o;
  o.shape = "square", o.colour = "blue", o.size = 0.2, o.cx = 0.5, o.cy = 0.5;
  scene.objects = {o};
  const auto bg = render_background(scene, 64, 64).sum(0);
  for (double angle : {0.0, 90.0, 180.0, 270.0}) {
    scene.light_angle_deg = angle;
    const auto r = render(scene, 64, 64);
    const auto img = r.image.sum(0);
    const auto outside = r.objects[0].full_mask.eq(0);
    // Darkened background pixels lie on the side away from the light.
    const auto dark = ((img < bg * 0.8) & outside).nonzero().to(at::kFloat);
    ASSERT_GT(dark.size(0), 10) << angle;
    const double sy = dark.select(1, 0).mean().item<double>() + 0.5 - 32, sx = dark.select(1, 1).mean().item<double>() + 0.5 - 32;
    const double a = angle * M_PI / 180;
    EXPECT_LT(sx * std::cos(a) - sy * std::sin(a), -3) << angle;  // (cos, -sin) points to the light, y down
    // Shading: the object's half towards the light is brighter.
    const auto inside = r.objects[0].full_mask.ge(1);
    auto ys = at::arange(64, at::kFloat).unsqueeze(1).expand({64, 64}) + 0.5 - 32;
    auto xs = at::arange(64, at::kFloat).unsqueeze(0).expand({64, 64}) + 0.5 - 32;
    const auto along = xs * std::cos(a) - ys * std::sin(a);
    const double lit = img.masked_select(inside & (along > 2)).mean().item<double>();
    const double unlit = img.masked_select(inside & (along < -2)).mean().item<double>();
    EXPECT_GT(lit, unlit + 0.1) << angle;
  }
}

TEST(ShapesWorld, RenderIsLayersOverBackgroundPlusShadows) {
  for (uint64_t seed : {3ull, 4ull, 5ull}) {
    const auto scene = sample_scene(seed);
    const auto r = render(scene, 64, 64);
    auto comp = render_background(scene, 64, 64);
    for (const auto& o : scene.objects) {
      const auto rgba = render_object_rgba(o, scene, 64, 64);
      const auto a = rgba.slice(0, 3, 4);
      comp = comp * (1 - a) + rgba.slice(0, 0, 3) * a;
    }
    // Equal except where a shadow darkens the background (by at most the shadow strength).
    EXPECT_TRUE((r.image <= comp + 1e-5).all().item<bool>());
    EXPECT_TRUE((r.image >= comp * 0.55 - 1e-5).all().item<bool>());
    EXPECT_GT((r.image - comp).abs().lt(1e-5).to(at::kFloat).mean().item<double>(), 0.6);
    EXPECT_LT((r.image - comp).abs().lt(1e-5).to(at::kFloat).mean().item<double>(), 1.0);  // shadows exist
  }
}

TEST(ShapesWorld, SameSceneAtAnySize) {
  for (uint64_t seed : {7ull, 8ull, 9ull}) {
    const auto scene = sample_scene(seed);
    const auto small = render(scene, 64, 64).image;
    const auto big = render(scene, 128, 128);
    const auto down = at::avg_pool2d(big.image.unsqueeze(0), 2)[0];
    EXPECT_LT((down - small).abs().mean().item<double>(), 0.02) << seed;
    // The analyser works at 128 too.
    const auto a = analyse(big.image);
    for (const auto& o : big.objects) {
      auto d = find_object(a, o.spec.shape, o.spec.colour);
      ASSERT_TRUE(d.has_value()) << object_phrase(o.spec);
      EXPECT_GT(iou(d->mask, o.visible_mask), 0.9);
    }
    // Non-square images render without distortion of the background gradient.
    EXPECT_EQ(render(scene, 64, 96).image.sizes(), (at::IntArrayRef{3, 64, 96}));
  }
}

TEST(ShapesWorld, RenderIsFast) {
  std::vector<SceneSpec> scenes;
  for (uint64_t seed = 0; seed < 200; ++seed) scenes.push_back(sample_scene(seed));
  const auto t0 = std::chrono::steady_clock::now();
  for (int rep = 0; rep < 5; ++rep)
    for (const auto& s : scenes) render(s, 64, 64);
  const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / 1000;
  const auto t1 = std::chrono::steady_clock::now();
  for (uint64_t seed = 0; seed < 1000; ++seed) sample_scene(seed);
  const double us_sample = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t1).count() / 1000;
  std::printf("[ShapesWorld] render 64x64: %.1f us per image (sample_scene: %.1f us)\n", us, us_sample);
  EXPECT_LT(us, 2000);  // generous: shared machines
}

TEST(ShapesWorld, Captions) {
  CaptionOptions all;
  all.colour_probability = all.pattern_probability = all.background_probability = all.tint_probability = 1;
  CaptionOptions none;
  none.colour_probability = none.pattern_probability = none.background_probability = none.tint_probability = 0;
  std::set<std::string> texts;
  for (uint64_t seed = 0; seed < 300; ++seed) {
    const auto scene = sample_scene(seed);
    const auto c = make_caption(scene, seed);
    texts.insert(c.text);
    ASSERT_EQ(c.object_phrases.size(), scene.objects.size());
    size_t last = 0;
    for (size_t i = 0; i < scene.objects.size(); ++i) {
      // Every object's shape, in scene order, its phrase verbatim at its span.
      const auto [b, e] = c.object_spans[i];
      EXPECT_EQ(c.text.substr(b, e - b), c.object_phrases[i]);
      EXPECT_TRUE(contains(c.object_phrases[i], scene.objects[i].shape));
      EXPECT_GE(b, last);
      last = e;
      EXPECT_FALSE(contains(c.object_phrases[i], "plain"));
    }
    if (!c.background_phrase.empty())
      EXPECT_EQ(c.text.substr(c.background_span.first, c.background_span.second - c.background_span.first),
                scene.background);
    // Full captions name everything and do not depend on the seed.
    const auto full = make_caption(scene, seed, all);
    EXPECT_EQ(full.text, caption(scene, seed + 1, all));
    EXPECT_TRUE(contains(full.text, scene.background)) << full.text;
    for (const auto& o : scene.objects) {
      EXPECT_TRUE(contains(full.text, object_phrase(o))) << full.text;
      EXPECT_TRUE(contains(full.text, o.colour));
    }
    const auto bare = caption(scene, seed, none);
    for (const auto& colour : colour_names()) EXPECT_FALSE(contains(bare, colour)) << bare;
    EXPECT_FALSE(contains(bare, scene.background) && scene.background != "sky") << bare;
  }
  EXPECT_GT(texts.size(), 250u);

  SceneSpec s;
  s.background = "grass";
  s.tint = "sunset";
  ObjectSpec a, b, o;
  a.shape = "circle", a.colour = "red";
  b.shape = "star", b.colour = "blue", b.pattern = "striped";
  o.shape = "square", o.colour = "orange";
  s.objects = {a, b};
  EXPECT_EQ(caption(s, 0, all), "a red circle and a striped blue star on grass at sunset");
  EXPECT_EQ(caption(s, 0, none), "a circle and a star");
  s.objects = {o, a, b};
  s.background = "sky";
  s.tint = "night";
  EXPECT_EQ(caption(s, 0, all), "an orange square, a red circle and a striped blue star in the sky at night");
  EXPECT_EQ(object_phrase(b), "striped blue star");
  EXPECT_EQ(object_phrase(b, true, false), "blue star");
  EXPECT_EQ(background_phrase("water"), "water");
}

TEST(ShapesWorld, JsonAndErrors) {
  const auto scene = sample_scene(42);
  const auto back = scene_from_json(to_json(scene));
  EXPECT_EQ(to_json(back), to_json(scene));
  auto j = to_json(scene);
  j["objects"][0]["shape"] = "hexagon";
  auto msg = test::expect_error([&] { scene_from_json(j, "scene.json"); });
  EXPECT_TRUE(contains(msg, "scene.json")) << msg;
  EXPECT_TRUE(contains(msg, "objects[0].shape")) << msg;
  EXPECT_TRUE(contains(msg, "hexagon")) << msg;
  j = to_json(scene);
  j["objects"][0]["colr"] = "red";
  msg = test::expect_error([&] { scene_from_json(j, "scene.json"); });
  EXPECT_TRUE(contains(msg, "colr")) << msg;
  SceneSpec bad;
  bad.tint = "dusk";
  msg = test::expect_error([&] { render(bad, 64, 64); });
  EXPECT_TRUE(contains(msg, "dusk") && contains(msg, "sunset")) << msg;
  test::expect_error([&] { render(SceneSpec{}, 8, 64); });
  test::expect_error([&] { analyse(at::zeros({64, 64})); });
  SampleOptions o;
  o.colours = {"red"};
  o.shapes = {"star"};
  o.excluded_colour_shapes = {{"red", "star"}};
  test::expect_error([&] { sample_scene(1, o); });
}

TEST(ShapesWorld, SampleOptions) {
  SampleOptions o;
  o.excluded_colour_shapes = {{"red", "star"}, {"blue", "circle"}};
  o.backgrounds = {"sand", "water"};
  o.tints = {"night"};
  o.min_objects = 2;
  o.max_objects = 3;
  std::set<std::string> seen;
  for (uint64_t seed = 0; seed < 300; ++seed) {
    const auto s = sample_scene(seed, o);
    EXPECT_TRUE(s.background == "sand" || s.background == "water");
    EXPECT_EQ(s.tint, "night");
    EXPECT_GE(s.objects.size(), 2u);
    EXPECT_LE(s.objects.size(), 3u);
    const auto r = render(s, 64, 64);
    for (size_t i = 0; i < s.objects.size(); ++i) {
      const auto& a = s.objects[i];
      seen.insert(a.colour + " " + a.shape);
      EXPECT_FALSE(a.colour == "red" && a.shape == "star");
      EXPECT_FALSE(a.colour == "blue" && a.shape == "circle");
      // Visible as promised (the sampler measures on a coarser grid), same colours never touching.
      const double full = r.objects[i].full_mask.sum().item<double>();
      EXPECT_GE(r.objects[i].visible_mask.sum().item<double>(), (o.min_visible - 0.1) * full);
      for (size_t k = i + 1; k < s.objects.size(); ++k)
        if (s.objects[k].colour == a.colour)
          EXPECT_EQ((r.objects[i].full_mask * r.objects[k].full_mask).sum().item<double>(), 0.0);
    }
  }
  EXPECT_GT(seen.size(), 25u);  // the other combinations do occur
  SampleOptions only;
  only.shapes = {"triangle"};
  only.patterns = {"dotted"};
  only.accept = [](const SceneSpec& s) { return s.objects.size() == 2; };
  for (uint64_t seed = 0; seed < 20; ++seed) {
    const auto s = sample_scene(seed, only);
    ASSERT_EQ(s.objects.size(), 2u);
    for (const auto& a : s.objects) EXPECT_TRUE(a.shape == "triangle" && a.pattern == "dotted");
  }
}

TEST(ShapesWorld, AnalyserAccuracyOnRenders) {
  Score s;
  for (uint64_t seed = 1000; seed < 1300; ++seed) {
    const auto scene = sample_scene(seed, crowded());
    const auto r = render(scene, 64, 64);
    score_scene(r, scene, analyse_scene(r.image), s);
  }
  std::printf("[ShapesWorld] analyser on %d rendered scenes, %d objects >= 40%% visible: colour+shape accuracy %.4f, "
              "mean mask IoU %.4f, pattern accuracy %.4f, background+tint accuracy %.4f, spurious detections %d of %d\n",
              s.scenes, s.objects, s.accuracy(), s.mean_iou(), s.pattern_accuracy(),
              static_cast<double>(s.lighting_correct) / s.scenes, s.spurious, s.detections);
  EXPECT_GT(s.objects, 550);
  EXPECT_LE(s.spurious, 0.02 * s.detections);
  EXPECT_GE(s.accuracy(), 0.97);
  EXPECT_GE(s.mean_iou(), 0.9);
  EXPECT_GE(static_cast<double>(s.lighting_correct) / s.scenes, 0.97);
}

TEST(ShapesWorld, AnalyserToleratesDegradedImages) {
  Score s;
  for (uint64_t seed = 2000; seed < 2080; ++seed) {
    const auto scene = sample_scene(seed);
    const auto r = render(scene, 64, 64);
    score_scene(r, scene, analyse_scene(degrade(r.image, seed)), s);
  }
  std::printf("[ShapesWorld] analyser on %d blurred+noisy+drifted scenes, %d objects: colour+shape accuracy %.4f, "
              "mean mask IoU %.4f, background+tint accuracy %.4f, spurious detections %d of %d\n",
              s.scenes, s.objects, s.accuracy(), s.mean_iou(), static_cast<double>(s.lighting_correct) / s.scenes,
              s.spurious, s.detections);
  EXPECT_LE(s.spurious, 0.05 * s.detections);
  EXPECT_GE(s.accuracy(), 0.9);
  EXPECT_GE(s.mean_iou(), 0.8);
}

TEST(ShapesWorld, EmptyScenesHaveNoObjects) {
  // Textures (bricks, waves, grass, ripples) and every tint: no false objects, the right lighting.
  for (const auto& background : background_names())
    for (const auto& tint : tint_names())
      for (uint64_t variant = 0; variant < 4; ++variant) {
        SceneSpec s;
        s.background = background, s.tint = tint, s.texture_seed = variant;
        for (const bool degraded : {false, true}) {
          const auto image = render(s, 64, 64).image;
          const auto a = analyse_scene(degraded ? degrade(image, variant) : image);
          EXPECT_EQ(a.objects.size(), 0u) << background << " " << tint << " " << variant << " " << degraded;
          EXPECT_EQ(a.background, background);
          EXPECT_EQ(a.tint, tint);
        }
      }
}

TEST(ShapesWorld, FindAndSegment) {
  SceneSpec scene;
  scene.background = "water";
  scene.tint = "sunset";
  ObjectSpec a, b;
  a.shape = "star", a.colour = "red", a.cx = 0.4, a.cy = 0.45, a.size = 0.2;
  b.shape = "square", b.colour = "yellow", b.cx = 0.62, b.cy = 0.6, b.size = 0.17, b.rotation_deg = 20;
  scene.objects = {a, b};
  const auto r = render(scene, 64, 64);
  const auto dets = analyse(r.image);
  EXPECT_TRUE(find_object(dets, "star", "red").has_value());
  EXPECT_TRUE(find_object(dets, "square", "").has_value());
  EXPECT_FALSE(find_object(dets, "star", "yellow").has_value());
  EXPECT_FALSE(find_object(r.image, "circle", "red").has_value());
  const auto d = *find_object(dets, "star", "red");
  EXPECT_NEAR(d.cx, 0.4, 0.02);
  EXPECT_NEAR(d.cy, 0.45, 0.02);
  EXPECT_NEAR(d.size, 0.2, 0.02);
  // Segmenting near an expected mask: the right object even when the expectation is displaced.
  EXPECT_GT(iou(segment_near(dets, r.objects[0].visible_mask, "red"), r.objects[0].visible_mask), 0.9);
  EXPECT_GT(iou(segment_near(r.image, r.objects[1].visible_mask, "yellow"), r.objects[1].visible_mask), 0.9);
  const auto shifted = at::roll(r.objects[1].visible_mask, {3, 3}, {0, 1});
  EXPECT_GT(iou(segment_near(dets, shifted, "yellow"), r.objects[1].visible_mask), 0.9);
  EXPECT_EQ(segment_near(dets, r.objects[0].visible_mask, "green").sum().item<double>(), 0.0);
}
