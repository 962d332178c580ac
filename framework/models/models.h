// The models module's public header: the Stable Diffusion networks (CLIP tokenizer and text encoder, UNet, VAE),
// their building blocks and the safetensors loader. Modules above include this header only.
#pragma once

#include "models/attention.h"
#include "models/autoencoder_kl.h"
#include "models/clip_encoder.h"
#include "models/clip_text_model.h"
#include "models/clip_tokenizer.h"
#include "models/controlnet.h"
#include "models/load.h"
#include "models/resnet.h"
#include "models/space_to_depth.h"
#include "models/text_states.h"
#include "models/unet_2d_condition.h"
