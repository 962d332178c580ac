#include <gtest/gtest.h>
#include <torch/torch.h>

#include "core/core.h"
#include "diffusion/pipeline.h"
#include "parity/parity.h"
#include "test_util.h"

using namespace collage;

namespace {
std::shared_ptr<StableDiffusion> tiny() {
  ComponentPaths p;
  p.tokenizer = test::golden("tokenizer");
  p.text_encoder = test::golden("text_encoder_sd1");
  p.unet = test::golden("unet_sd1");
  p.vae = test::golden("vae");
  p.scheduler_config = test::golden("pipeline/scheduler/scheduler_config.json");
  return StableDiffusion::load(p);
}
GenerateRequest request() {
  GenerateRequest r;
  r.prompt = "a red barn";
  r.negative_prompt = "blurry";
  r.steps = 4;
  r.height = r.width = 32;
  return r;
}
}  // namespace

TEST(Pipeline, GoldenTxt2ImgAndImg2Img) {
  parity::Recorder rec("pipeline");
  parity::check_pipeline(test::golden("pipeline"), rec);
  ASSERT_GT(rec.results().size(), 20u);
  for (const auto& r : rec.results())
    EXPECT_TRUE(r.pass) << r.name << ": " << r.detail << " max_abs " << r.max_abs_diff << " max|ref| " << r.max_abs_ref;
}

TEST(Pipeline, SeedDeterminesImageWhateverTheBatch) {
  auto sd = tiny();
  SeededNoise a({11, 12});
  auto both = txt2img(*sd, request(), a, 2);
  SeededNoise b({12});
  auto single = txt2img(*sd, request(), b, 1);
  // Same seed, other batch: equal up to float rounding of batched vs single GEMMs (latents reach |x| ~ 70
  // with this random, non-denoising UNet, so the tolerance is relative to max|x| as in the golden README).
  auto cmp = compare_tensors(both.latents[1], single.latents[0], 1e-4, 1e-5);
  EXPECT_TRUE(cmp.pass) << cmp.describe();
  EXPECT_FALSE(torch::allclose(both.latents[0], both.latents[1], 1e-2, 1e-2));
  SeededNoise c({12});
  auto again = txt2img(*sd, request(), c, 1);
  EXPECT_TRUE(torch::equal(again.latents, single.latents));
  EXPECT_EQ(single.images.sizes(), (at::IntArrayRef{1, 3, 32, 32}));
  EXPECT_GE(single.images.min().item<double>(), 0.0);
  EXPECT_LE(single.images.max().item<double>(), 1.0);
}

TEST(Pipeline, HooksSeeEveryStepAndCanReplaceLatents) {
  auto sd = tiny();
  SeededNoise noise({3});
  std::vector<double> ts, next;
  SamplerHooks hooks;
  hooks.on_step_end = [&](StepState& s) {
    ts.push_back(s.timestep);
    next.push_back(s.next_timestep);
    EXPECT_TRUE(s.noise_pred.defined());
    s.latents = torch::zeros_like(s.latents);
  };
  auto out = txt2img(*sd, request(), noise, 1, hooks);
  ASSERT_EQ(ts.size(), 4u);
  EXPECT_EQ(next.back(), -1);
  EXPECT_EQ(next[0], ts[1]);
  EXPECT_EQ(out.latents.abs().max().item<double>(), 0.0);  // the hook's replacement is what the loop keeps
}

TEST(Pipeline, Img2ImgRunsTheTailOfTheSchedule) {
  auto sd = tiny();
  auto r = request();
  r.steps = 10;
  r.strength = 0.3;
  r.init_image = torch::rand({1, 3, 32, 32});
  SeededNoise noise({5});
  auto out = img2img(*sd, r, noise, 1);
  EXPECT_EQ(out.timesteps.size(), 3u);
  r.strength = 1.5;
  SeededNoise noise2({5});
  EXPECT_THROW(img2img(*sd, r, noise2, 1), Error);
}

TEST(Pipeline, RejectsBadRequests) {
  auto sd = tiny();
  auto r = request();
  r.height = 31;
  SeededNoise n({1});
  try {
    txt2img(*sd, r, n, 1);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.field(), "--height");
  }
  r = request();
  r.steps = 0;
  EXPECT_THROW(txt2img(*sd, r, n, 1), Error);
  EXPECT_THROW(StableDiffusion::load(test::golden("unet_sd1")), Error);  // not a pipeline folder
}

// Sweeps encode the same prompts for every run and seed: the second time comes from the cache, with the
// very same tensor, and a cache that is full forgets the oldest prompt first.
TEST(Pipeline, PromptEmbeddingsAreCached) {
  auto sd = tiny();
  sd->prompt_cache_limit = 2;
  auto first = sd->encode_prompt({"a red barn", "blurry"});
  EXPECT_EQ(sd->prompt_cache_misses, 2);
  auto again = sd->encode_prompt({"blurry", "a red barn"});
  EXPECT_EQ(sd->prompt_cache_hits, 2);
  EXPECT_TRUE(torch::equal(again[0], first[1]));
  EXPECT_TRUE(torch::equal(again[1], first[0]));
  sd->prompt_cache_limit = 0;  // uncached: the same numbers
  auto uncached = sd->encode_prompt({"a red barn", "blurry"});
  EXPECT_TRUE(torch::allclose(uncached, first, 1e-6, 1e-6));
  sd->prompt_cache_limit = 2;
  sd->encode_prompt({"a green field"});  // evicts "a red barn"
  const auto misses = sd->prompt_cache_misses;
  sd->encode_prompt({"blurry"});
  EXPECT_EQ(sd->prompt_cache_misses, misses);
  sd->encode_prompt({"a red barn"});
  EXPECT_EQ(sd->prompt_cache_misses, misses + 1);
}
