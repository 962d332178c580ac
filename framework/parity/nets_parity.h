// Parity checkers for the metric networks, on reference folders laid out like shared/golden/{clip_vision,clip,lpips}
// (or any other folder made by the same recipe whose name starts the same way, e.g. a holdout set):
//   clip_vision*  CLIPVisionModelWithProjection cases + CLIPImageProcessor preprocessing (uint8 stages exact)
//   clip*         (not clip_vision*) full CLIPModel: embeddings, logits, hidden states, CLIP-score pairs
//   lpips*        LPIPS v0.1 with every backbone listed in cases.safetensors' metadata `nets`
// Every tensor of the cases files is compared (inputs are checked for consistency or used); a reference tensor the
// checker does not recognise is recorded as a failure, so nothing is skipped silently.
#pragma once

#include <string>
#include <vector>

#include "parity/parity.h"

namespace collage::parity {

void check_clip_vision(const std::string& folder, Recorder& rec);
void check_clip(const std::string& folder, Recorder& rec);
void check_lpips(const std::string& folder, Recorder& rec);

// {"clip_vision", ...}, {"clip", ...}, {"lpips", ...}, claiming folders by name prefix.
std::vector<ComponentChecker> metric_net_checkers();

}  // namespace collage::parity
