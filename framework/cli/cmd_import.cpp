// collage import-demo: the authors' demo collages (their front end's JSON) as a collage dataset.
#include <filesystem>
#include <iostream>

#include "cli/common.h"
#include "collage/collage.h"
#include "core/core.h"

namespace fs = std::filesystem;

namespace collage::cli {

namespace {

struct ImportArgs {
  std::string file, out;
  DemoImportOptions options;
};

void run_import(const ImportArgs& a) {
  const auto collages = import_demo_collages(a.file, a.options);  // all of them valid before anything is written
  save_collage_dataset(collages, a.out,
                       {{"generator", "import-demo"}, {"source", fs::absolute(a.file).string()}, {"size", a.options.size}});
  for (size_t k = 0; k < collages.size(); ++k) {
    const auto& c = collages[k];
    const auto d = sampling_defaults(c);
    std::cout << fmt::format("{}  {} layers, seed {}, {} steps, guidance {}: {}\n",
                             (fs::path(a.out) / std::to_string(k)).string(), c.layers.size(),
                             d.seed ? std::to_string(*d.seed) : "-", d.steps ? std::to_string(*d.steps) : "-",
                             d.guidance_scale ? fmt::format("{}", *d.guidance_scale) : "-", c.prompt);
  }
  std::cerr << fmt::format("{} collage(s) in {} (index.json lists them)\n", collages.size(), a.out);
}

}  // namespace

void add_import_commands(CLI::App& app, GlobalOptions& global) {
  auto a = std::make_shared<ImportArgs>();
  auto* cmd = app.add_subcommand(
      "import-demo", "import the authors' demo collages (examples list, collage request or layer list) as a dataset");
  cmd->add_option("file", a->file, "the demo's JSON file")->required();
  cmd->add_option("--images", a->options.images_dir,
                  "folder holding the layer images, named as the last segment of their URLs (extension optional)");
  cmd->add_option("--out", a->out, "output dataset folder: OUT/<k>/collage.json for the k-th collage, OUT/index.json")
      ->required();
  cmd->add_option("--prompt", a->options.prompt, "collage text (needed for a bare layer list; overrides the file's)");
  cmd->add_option("--size", a->options.size, "canvas side in pixels (their geometry is scaled from 512)")
      ->capture_default_str();
  cmd->callback([a, &global] {
    apply_runtime(global);
    run_import(*a);
  });
}

}  // namespace collage::cli
