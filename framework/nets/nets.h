// The nets module's public header: the networks the metrics and trainers use (CLIP image/text model with its
// image processor, LPIPS). Modules above include this header only.
#pragma once

#include "nets/clip_model.h"
#include "nets/lpips.h"
