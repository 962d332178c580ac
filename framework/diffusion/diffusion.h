// The diffusion module's public header: schedulers, the one sampling loop, classifier-free guidance and the
// txt2img / img2img pipelines. Modules above include this header only.
#pragma once

#include "diffusion/controlnet.h"
#include "diffusion/guidance.h"
#include "diffusion/pipeline.h"
#include "diffusion/sampler.h"
#include "diffusion/scheduler.h"
