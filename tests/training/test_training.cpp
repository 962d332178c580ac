// The embedded-model trainer: lossless space-to-depth autoencoder, loss decrease, export -> pipeline load,
// checkpoint resume.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>

#include "core/safetensors.h"
#include "diffusion/pipeline.h"
#include "diffusion/scheduler.h"
#include "models/space_to_depth.h"
#include "test_util.h"
#include "tiny_clip.h"
#include "training/clip_trainer.h"
#include "training/trainer.h"

namespace fs = std::filesystem;
using namespace collage;

namespace {

training::TrainConfig tiny_config() {
  Json j = {
      {"seed", 7},
      // 8x8 latents: at 4x4 the CLI (--threads 1 only) hits a non-finite forward pass at step 3 with finite
      // weights and data; it vanishes with MALLOC_PERTURB_ set, so it is an uninitialised read in a libtorch
      // 1.13 CPU kernel (not located; see the issue note).
      {"image_size", 32},
      {"batch_size", 4},
      {"learning_rate", 3e-3},
      {"warmup_steps", 1},
      {"checkpoint_every", 2},
      {"log_every", 1},
      {"held_out", Json::array({Json::array({"red", "star"})})},
      {"tokenizer_source", test::golden("tokenizer")},
      {"unet",
       {{"sample_size", 8},
        {"in_channels", 48},
        {"out_channels", 48},
        {"down_block_types", {"CrossAttnDownBlock2D", "DownBlock2D"}},
        {"up_block_types", {"UpBlock2D", "CrossAttnUpBlock2D"}},
        {"block_out_channels", {32, 32}},
        {"layers_per_block", 1},
        {"attention_head_dim", 2},
        {"cross_attention_dim", 16},
        {"norm_num_groups", 32},
        {"use_linear_projection", true}}},
      {"text_encoder", test::tiny_clip_model_json(32, 8, 16)["text_config"]},  // the tiny CLIP's text tower
      {"scheduler",
       {{"_class_name", "EulerAncestralDiscreteScheduler"},
        {"num_train_timesteps", 1000},
        {"beta_start", 0.00085},
        {"beta_end", 0.012},
        {"beta_schedule", "scaled_linear"},
        {"prediction_type", "epsilon"},
        {"timestep_spacing", "linspace"},
        {"steps_offset", 1}}}};
  return training::TrainConfig::from_json(j, "tiny");
}

}  // namespace

TEST(SpaceToDepth, RoundTripIsExact) {
  SpaceToDepthConfig c;
  c.factor = 4;
  c.scaling_factor = 2.5;
  SpaceToDepthAutoencoder ae(c);
  EXPECT_EQ(ae.latent_channels(), 48);
  EXPECT_EQ(ae.downscale_factor(), 4);
  auto x = torch::rand({2, 3, 64, 64}) * 2 - 1;
  auto post = ae.encode(x);
  ASSERT_EQ(post.mean.sizes(), (std::vector<int64_t>{2, 48, 16, 16}));
  auto z = post.sample(torch::randn({2, 48, 16, 16}));
  EXPECT_TRUE(torch::equal(z, post.mean));
  EXPECT_TRUE(torch::equal(ae.decode(z), x));
  // channel c*16 + i*4 + j of latent pixel (y, x) is pixel (4y + i, 4x + j) of colour channel c
  EXPECT_EQ(post.mean[1][16 + 2 * 4 + 3][5][7].item<float>(), x[1][1][4 * 5 + 2][4 * 7 + 3].item<float>());

  const auto dir = test::temp_dir("s2d");
  write_json_file(dir + "/config.json", c.to_json());
  auto loaded = load_autoencoder(dir);
  EXPECT_DOUBLE_EQ(loaded->scaling_factor(), 2.5);
  EXPECT_TRUE(torch::equal(loaded->decode(loaded->encode(x).mean), x));
}

TEST(Trainer, LossDecreasesOnAFixedBatch) {
  at::set_num_threads(1);  // 2 threads on 2 busy cores: OpenMP spin-waits dominate
  training::Trainer trainer(tiny_config(), test::temp_dir("trainer_fixed"));
  auto batch = trainer.make_batch(0);
  ASSERT_EQ(batch.latents.sizes(), (std::vector<int64_t>{4, 48, 8, 8}));
  ASSERT_EQ(batch.input_ids.sizes(), (std::vector<int64_t>{4, 16}));
  // the same step gives the same batch
  auto again = trainer.make_batch(0);
  EXPECT_TRUE(torch::equal(batch.latents, again.latents));
  EXPECT_TRUE(torch::equal(batch.noise, again.noise));
  EXPECT_EQ(batch.captions, again.captions);
  const double before = trainer.loss_on(batch);
  for (int i = 0; i < 30; ++i) trainer.train_step(&batch);
  const double after = trainer.loss_on(batch);
  EXPECT_LT(after, 0.8 * before) << "before " << before << " after " << after;
  EXPECT_EQ(trainer.step(), 30);
}

// lr_decay "cosine" (the CPU-budget recipes): full rate right after the warm-up, falling towards a tenth at max_steps,
// in between; "constant" keeps the full rate; anything else is an error naming the key.
TEST(Trainer, CosineLearningRateDecaysTowardsATenth) {
  at::set_num_threads(1);
  auto config = tiny_config();
  config.learning_rate = 1e-3;
  config.warmup_steps = 2;
  config.max_steps = 8;
  config.lr_decay = "cosine";
  training::Trainer trainer(config, test::temp_dir("trainer_cosine"));
  auto batch = trainer.make_batch(0);
  std::vector<double> lr;
  for (int i = 0; i < 8; ++i) lr.push_back(trainer.train_step(&batch).lr);
  EXPECT_NEAR(lr[0], 0.5e-3, 1e-12);  // warm-up
  EXPECT_NEAR(lr[2], 1e-3, 1e-12);    // warm-up done: full rate
  for (int i = 3; i < 8; ++i) EXPECT_LT(lr[i], lr[i - 1]) << "step " << i;
  EXPECT_NEAR(lr[7], 1e-3 * (0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI * 5.0 / 6.0))), 1e-12);
  config.lr_decay = "constant";
  training::Trainer flat(config, test::temp_dir("trainer_constant"));
  for (int i = 0; i < 8; ++i) lr[i] = flat.train_step(&batch).lr;
  EXPECT_NEAR(lr[7], 1e-3, 1e-12);
  auto bad = tiny_config().raw;
  ASSERT_TRUE(bad.is_object());
  bad["lr_decay"] = "linear";
  try {
    training::TrainConfig::from_json(bad, "tiny.json");
    FAIL() << "lr_decay 'linear' accepted";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("lr_decay"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("tiny.json"), std::string::npos) << e.what();
  }
}

// The target the trainer regresses must be what the sampler inverts: with the exact target as the model output,
// the Euler-ancestral step's x0 estimate is the clean latent, for epsilon and for v-prediction.
TEST(Trainer, TrainingTargetIsWhatTheSamplerInverts) {
  for (const std::string type : {"epsilon", "v_prediction"}) {
    auto cfg = tiny_config().scheduler;
    cfg["prediction_type"] = type;
    auto sched = make_scheduler("euler_ancestral", SchedulerConfig::from_json(cfg, "tiny"));
    sched->set_timesteps(10);
    auto x0 = at::randn({2, 48, 8, 8}), eps = at::randn({2, 48, 8, 8});
    for (int64_t k : {0, 4}) {  // t = 999 (index 0) and one inside the schedule
      sched->set_timesteps(10);
      const double t = sched->timestep_values()[k];
      const double sigma = sched->sigmas()[k].item<double>();
      const auto alphabar = at::scalar_tensor(1.0 / (1.0 + sigma * sigma));  // the sigma's own alphabar
      auto target = training::diffusion_target(type == "v_prediction", x0, eps, alphabar);
      for (int64_t i = 0; i < k; ++i)  // advance the step index to k
        sched->step(at::zeros_like(x0), sched->timestep_values()[i], x0, at::zeros_like(x0));
      auto out = sched->step(target, t, x0 + sigma * eps, at::zeros_like(x0));
      EXPECT_TRUE(at::allclose(out.pred_original_sample, x0, 1e-4, 1e-4)) << type << " t " << t;
    }
  }
}

// v-prediction trains (the loss falls) and its export says so, so that the samplers read it as v.
TEST(Trainer, VPredictionTrainsAndExportsItsPredictionType) {
  at::set_num_threads(1);
  auto config = tiny_config();
  config.scheduler["prediction_type"] = "v_prediction";
  const auto dir = test::temp_dir("trainer_v");
  training::Trainer trainer(config, dir);
  EXPECT_TRUE(trainer.v_prediction());
  auto batch = trainer.make_batch(0);
  const double before = trainer.loss_on(batch);
  for (int i = 0; i < 30; ++i) trainer.train_step(&batch);
  EXPECT_LT(trainer.loss_on(batch), 0.8 * before);
  trainer.export_model((fs::path(dir) / "model").string());
  auto sched = read_json_file((fs::path(dir) / "model" / "scheduler" / "scheduler_config.json").string());
  EXPECT_EQ(sched["prediction_type"].get<std::string>(), "v_prediction");

  config.scheduler["prediction_type"] = "sample";
  try {
    training::Trainer bad(config, test::temp_dir("trainer_sample"));
    FAIL() << "prediction_type sample accepted";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("scheduler.prediction_type"), std::string::npos) << e.what();
  }
}

// The text conditioning is learned only if the loss reaches the text encoder: the caption tokens' embedding
// rows must receive gradient (an unused token's row none).
TEST(Trainer, CaptionTokensReceiveGradients) {
  at::set_num_threads(1);
  training::Trainer trainer(tiny_config(), test::temp_dir("trainer_grad"));
  auto batch = trainer.make_batch(0);
  batch.timesteps.fill_(100);
  trainer.text_encoder->zero_grad();
  trainer.unet->zero_grad();
  auto ids = batch.input_ids;
  // the loss of train_step, without the update
  auto ac = 0.9;
  auto noisy = std::sqrt(ac) * batch.latents + std::sqrt(1 - ac) * batch.noise;
  auto emb = trainer.text_encoder->forward(ids).last_hidden_state;
  auto loss = at::mse_loss(trainer.unet->forward(noisy, batch.timesteps, emb), batch.noise);
  loss.backward();
  auto g = trainer.text_encoder->token_embedding_weight().grad();
  ASSERT_TRUE(g.defined());
  const int64_t used = ids[0][1].item<int64_t>();  // the first caption's first word
  const double used_norm = g[used].norm().item<double>();
  std::cerr << "caption token " << used << " grad norm " << used_norm << ", loss " << loss.item<double>() << "\n";
  EXPECT_GT(used_norm, 1e-6);
  EXPECT_EQ(g[1000].norm().item<double>(), 0.0);
}

// A text encoder taken from a trained CLIP (train-clip's output) and kept frozen, as Stable Diffusion keeps
// OpenAI's: the weights arrive unchanged, stay unchanged through training steps, and a mismatching
// architecture is refused naming the CLIP's config file and key.
TEST(Trainer, TextEncoderFromAClipFolderStaysFrozen) {
  at::set_num_threads(1);
  Json clip = {{"seed", 5},
               {"image_size", 32},
               {"batch_size", 4},
               {"log_every", 1},
               {"export_every", 0},
               {"tokenizer_source", test::golden("tokenizer")},
               {"clip", test::tiny_clip_model_json(32, 16, 8)}};
  training::ClipTrainOptions co;
  co.out_dir = test::temp_dir("trainer_clip_src");
  co.steps = 2;
  co.quiet = true;
  co.eval_images = 0;
  const auto clip_dir = training::train_clip(training::ClipTrainConfig::from_json(clip, "clip"), co).model_dir;
  auto source = load_safetensors((fs::path(clip_dir) / "model.safetensors").string());

  auto config = tiny_config();
  config.text_encoder_from = clip_dir;
  config.train_text_encoder = false;
  training::Trainer trainer(config, test::temp_dir("trainer_frozen_text"));
  auto check_equal = [&] {
    for (const auto& p : trainer.text_encoder->named_parameters(true))
      EXPECT_TRUE(torch::equal(p.value(), source.at(p.key()).to(at::kFloat))) << p.key();
  };
  check_equal();
  const auto unet_before = trainer.unet->named_parameters()["conv_in.weight"].detach().clone();
  trainer.train_step();
  trainer.train_step();
  check_equal();
  EXPECT_FALSE(torch::equal(unet_before, trainer.unet->named_parameters()["conv_in.weight"]));

  // The text probe: both losses finite; with captions and without differ once the captions reach the UNet.
  const auto [cond, uncond] = trainer.text_probe(false);
  EXPECT_TRUE(std::isfinite(cond) && std::isfinite(uncond));
  EXPECT_NE(cond, uncond);

  // unet_from: a new run starts from this run's UNet (checkpoint file), with its own text encoder.
  const auto checkpoint = fs::path(trainer.save_checkpoint()) / "params.safetensors";
  auto fresh = tiny_config();
  fresh.unet_from = checkpoint.string();
  training::Trainer next(fresh, test::temp_dir("trainer_unet_from"));
  for (const auto& p : trainer.unet->named_parameters(true))
    EXPECT_TRUE(torch::equal(p.value(), next.unet->named_parameters()[p.key()])) << p.key();

  config.text_encoder["hidden_size"] = 32;
  config.unet["cross_attention_dim"] = 32;
  try {
    training::Trainer bad(config, test::temp_dir("trainer_bad_text"));
    ADD_FAILURE() << "a 16-wide CLIP loaded into a 32-wide text encoder";
  } catch (const Error& e) {
    EXPECT_EQ(e.file(), (fs::path(clip_dir) / "config.json").string());
    EXPECT_EQ(e.field(), "text_config.hidden_size");
  }
}

TEST(Trainer, ExportLoadsAsPipelineAndResumeContinues) {
  at::set_num_threads(1);  // 2 threads on 2 busy cores: OpenMP spin-waits dominate
  const auto out = test::temp_dir("trainer_run");
  training::TrainOptions o;
  o.out_dir = out;
  o.steps = 3;
  o.quiet = true;
  auto r = training::train(tiny_config(), o);
  EXPECT_EQ(r.steps, 3);
  EXPECT_TRUE(fs::exists(out + "/loss.csv"));
  EXPECT_TRUE(fs::exists(out + "/model/TRAINING.md"));
  EXPECT_TRUE(fs::exists(out + "/checkpoints/step_0000003/state.json"));
  // exported weights are float16
  auto f = SafetensorsFile::open(out + "/model/unet/diffusion_pytorch_model.safetensors");
  EXPECT_EQ(f->entry(f->names().front()).dtype, "F16");

  auto sd = StableDiffusion::load(out + "/model");
  EXPECT_EQ(sd->tokenizer->model_max_length(), 16);
  EXPECT_EQ(sd->default_image_size(), 32);
  GenerateRequest req;
  req.prompt = "a blue circle on grass";
  req.steps = 3;
  req.guidance_scale = 4.0;
  SeededNoise noise({1, 2});
  auto gen = txt2img(*sd, req, noise, 2);
  EXPECT_EQ(gen.images.sizes(), (std::vector<int64_t>{2, 3, 32, 32}));
  EXPECT_TRUE(torch::isfinite(gen.images).all().item<bool>());

  // The compositional test runs on an export; "exact" successes are successes with nothing else detected.
  training::EvalOptions eo;
  eo.n = 3;
  eo.steps = 2;
  std::vector<std::pair<int64_t, bool>> seen;  // every image reaches the caller, in order, with its verdict
  eo.on_image = [&](int64_t i, const at::Tensor& image, bool ok) {
    EXPECT_EQ(image.sizes(), (std::vector<int64_t>{3, 32, 32}));
    EXPECT_TRUE(image.device().is_cpu());
    seen.emplace_back(i, ok);
  };
  const auto ev = training::evaluate_shapesworld(out + "/model", eo);
  EXPECT_EQ(ev.prompts, 3);
  ASSERT_EQ(ev.detected.size(), 3u);
  ASSERT_EQ(seen.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(seen[i].first, int64_t(i));
    EXPECT_EQ(seen[i].second, bool(ev.success[i]));
  }
  EXPECT_LE(ev.exact, ev.all_found);
  int64_t exact = 0;
  for (size_t i = 0; i < 3; ++i) exact += ev.success[i] && ev.detected[i] == (i % 2 ? 2 : 1);
  EXPECT_EQ(ev.exact, exact);
  EXPECT_EQ(ev.to_json()["items"][0]["detected"], ev.detected[0]);

  // an uninterrupted 5-step run equals 3 steps + resume to 5
  o.steps = 5;
  o.resume = true;
  auto r2 = training::train(tiny_config(), o);
  EXPECT_EQ(r2.steps, 5);
  const auto out_b = test::temp_dir("trainer_run_b");
  training::TrainOptions ob;
  ob.out_dir = out_b;
  ob.steps = 5;
  ob.quiet = true;
  training::train(tiny_config(), ob);
  auto a = load_safetensors(out + "/checkpoints/step_0000005/params.safetensors");
  auto b = load_safetensors(out_b + "/checkpoints/step_0000005/params.safetensors");
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [k, v] : a) EXPECT_TRUE(torch::allclose(v, b.at(k), 1e-5, 1e-6)) << k;
  // rendering the next batch while a step runs (the CUDA default) changes nothing
  const auto out_c = test::temp_dir("trainer_run_c");
  ob.out_dir = out_c;
  ob.prefetch = 1;
  training::train(tiny_config(), ob);
  auto c = load_safetensors(out_c + "/checkpoints/step_0000005/params.safetensors");
  for (const auto& [k, v] : c) EXPECT_TRUE(torch::equal(v, b.at(k))) << k;
  // without --resume, an existing run is refused
  o.resume = false;
  test::expect_error([&] { training::train(tiny_config(), o); });
}

// What a short GPU lease brings back is the EMA weights alone (float16, within the per-file size limit):
// --resume must continue from them with a fresh optimiser, and exporting without training reproduces them.
TEST(Trainer, ResumesFromAnEmaOnlyCheckpoint) {
  at::set_num_threads(1);
  const auto out = test::temp_dir("trainer_ema_only");
  training::TrainOptions o;
  o.out_dir = out;
  o.steps = 2;
  o.quiet = true;
  training::train(tiny_config(), o);
  const auto ck = out + "/checkpoints/step_0000002";
  auto ema = load_safetensors(ck + "/ema.safetensors");
  for (auto& [k, v] : ema) v = v.to(at::kHalf);
  save_safetensors(ck + "/ema.safetensors", ema);
  fs::remove(ck + "/params.safetensors");
  fs::remove(ck + "/optimizer.pt");
  o.resume = true;  // steps stay 2: nothing to train, only the export
  auto r = training::train(tiny_config(), o);
  EXPECT_EQ(r.steps, 2);
  EXPECT_GT(r.final_loss, 0.0);  // read back from loss.csv
  auto exported = load_safetensors(out + "/model/unet/diffusion_pytorch_model.safetensors");
  for (const auto& [k, v] : exported) EXPECT_TRUE(torch::equal(v, ema.at("unet." + k))) << k;
  o.steps = 3;  // and training goes on from there
  EXPECT_EQ(training::train(tiny_config(), o).steps, 3);
}

// A non-finite loss must not reach the weights: the step is refused (not counted), so that train() can say
// whether the data or the weights were to blame, and the last checkpoint stays valid.
TEST(Trainer, NonFiniteLossLeavesTheWeightsUntouched) {
  at::set_num_threads(1);
  training::Trainer trainer(tiny_config(), test::temp_dir("trainer_nan"));
  auto batch = trainer.make_batch(0);
  batch.latents[0][0][0][0] = std::numeric_limits<float>::quiet_NaN();
  const auto before = trainer.named_state(false);
  auto st = trainer.train_step(&batch);
  EXPECT_FALSE(std::isfinite(st.loss));
  EXPECT_EQ(trainer.step(), 0);
  for (const auto& [k, v] : trainer.named_state(false)) EXPECT_TRUE(torch::equal(v, before.at(k))) << k;
}
