// Public header of framework/core: errors, safetensors and JSON IO, tensor comparison.
#pragma once

#include "core/canny.h"
#include "core/compare.h"
#include "core/error.h"
#include "core/image.h"
#include "core/json.h"
#include "core/paths.h"
#include "core/process.h"
#include "core/safetensors.h"
#include "core/version.h"
