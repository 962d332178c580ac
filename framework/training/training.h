// The training module's public header: the embedded model's UNet/text-encoder trainer, the sandbox CLIP trainer and
// the compositional evaluation. Modules above include this header only.
#pragma once

#include "training/clip_trainer.h"
#include "training/trainer.h"
