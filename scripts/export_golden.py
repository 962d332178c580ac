#!/usr/bin/env python3
"""Exports reference tensors from a diffusers Stable Diffusion model, for `collage parity`.

Run this on a machine WITH torch, diffusers 0.21.x and transformers (plus ftfy, see below). It loads a
diffusers pipeline folder (model_index.json, tokenizer/, text_encoder/, unet/, vae/, scheduler/; e.g. real
Stable Diffusion 1.5 or 2.1 weights), runs the Python reference implementations on small inputs and writes
a folder with exactly the layout of tests/data/golden/ (documented in tests/data/golden/README.md):

    OUT/tokenizer/      vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json (SD1
                        convention: pad = <|endoftext|>), sd2/ (the same with pad "!", SD2 convention) and
                        cases.json (40 prompts: tokens, ids_untruncated, ids_sd1, ids_sd2, ...)
    OUT/text_encoder/   config.json, model.safetensors, cases.safetensors (input_ids, hidden_states.i,
                        last_hidden_state, pooler_output)
    OUT/unet/           config.json, diffusion_pytorch_model.safetensors, cases.safetensors (cases b2,
                        b2_t0d, b1_ns: sample, timestep, encoder_hidden_states, out; b2.debug.* intermediates)
    OUT/vae/            config.json, diffusion_pytorch_model.safetensors, cases.safetensors (cases sq, ns, b2:
                        image, enc_parameters, enc_mean, enc_logvar, enc_std, sample_noise, enc_sample,
                        dec_latent, dec_out)
    OUT/schedulers/     schedulers.json, <scheduler>_<prediction>.safetensors (20-step trajectories with a
                        fake model), img2img_and_scale.safetensors, train_schedule.safetensors
    OUT/pipeline/       pipeline.json, model_index.json, scheduler/scheduler_config.json, txt2img.safetensors,
                        img2img.safetensors (every randn_tensor draw, per-step UNet inputs/outputs, latents)

Then check the C++ implementation against it:

    python3 scripts/export_golden.py --model /path/to/stable-diffusion-v1-5 --out /tmp/golden_sd15
    build/collage parity /tmp/golden_sd15          # add --all to see every case

The weight files are not duplicated: each component folder gets a copy of the model's config.json and a
symlink to its weights (--copy-weights copies them instead). A component stored only as a PyTorch .bin
(or under another name) is written out as float32 safetensors from the loaded model.

Numerics follow the reference recipe: float32 on the CPU, 1 intra-op thread, and the classic attention
processor (AttnProcessor: baddbmm -> softmax -> bmm) for the UNet and the VAE instead of torch 2's
scaled_dot_product_attention; transformers >= 4.36 is asked for its "eager" CLIP attention. All cases are
small so that a real 1 GB - 5 GB model runs on a CPU in minutes: UNet cases on a --small-latent (16) latent,
VAE cases on 64x64 images, the pipelines at 128x128 (16x16 latents) with --steps 10; pass --height 512
--width 512 for a full-size pipeline run.

Self-check: the golden folder itself can be the model (its pipeline/pipeline.json names the component
folders). With --seed 0 every seed, input and setting equals the recipe of tests/data/golden, so

    python3 scripts/export_golden.py --model tests/data/golden --out /tmp/g --compare tests/data/golden

should reproduce tests/data/golden (unet_sd1, vae, text_encoder_sd1, tokenizer, schedulers, pipeline) to
float32 rounding, bit-exactly with the reference versions (torch 1.13, diffusers 0.21.4, transformers 4.33).

The tokenizer cases depend on ftfy: without it transformers' CLIPTokenizer falls back to a different text
cleaning (BasicTokenizer) than the ftfy path our tokenizer implements. Install ftfy (6.1.1 was used).

Only torch, numpy, diffusers, transformers and the standard library are used; safetensors files are
written by the small writer below (the `safetensors` package is not needed). `--help` works without any
of them.
"""
import argparse
import contextlib
import importlib.util
import json
import math
import os
import platform
import shutil
import struct
import sys
import tempfile
import time

GENERATOR = "export_golden"
COMPONENTS = ["tokenizer", "text_encoder", "unet", "vae", "schedulers", "pipeline"]

# The reference scheduler configuration (SD1.5 / SD2.1 scheduler_config.json); a model's own values for
# these keys take precedence. prediction_type is set per variant.
BASE_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "steps_offset": 1, "set_alpha_to_one": False, "clip_sample": False, "prediction_type": "epsilon",
    "skip_prk_steps": True, "trained_betas": None,
}
# (key prefix, diffusers class), in the order that fixes their seeds.
SCHEDULERS = [
    ("euler_ancestral", "EulerAncestralDiscreteScheduler"),
    ("euler", "EulerDiscreteScheduler"),
    ("ddim", "DDIMScheduler"),
    ("ddpm", "DDPMScheduler"),
    ("pndm", "PNDMScheduler"),
    ("dpmsolver_multistep", "DPMSolverMultistepScheduler"),
]
PREDICTION_TYPES = ["epsilon", "v_prediction"]
EULER_FAMILY = ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler")
FAKE_MODEL_DESCRIPTION = (
    "model_output = x * a + 0.1 * sin(x), with a = float32(0.3 * cos(t / 300)) computed in float64 then "
    "rounded to float32, t = the scheduler timestep value as a float64 (e.g. 999.0 or 946.42105...), "
    "x = scheduler.scale_model_input(sample, t) (float32, shape (1,4,8,8)); all tensor math in float32. "
    "I.e. eps(x,t) = 0.3*x*cos(t/300) + 0.1*sin(x) evaluated on the *scaled* model input, as a real "
    "pipeline feeds the UNet.")

# Seed offsets (added to --seed). With --seed 0 they are the seeds of tests/data/golden.
SEED_UNET_INPUTS = 1032          # one generator: (sample, encoder_hidden_states) of b2, b2_t0d, b1_ns
SEED_VAE_INPUTS = 1052           # one generator: (image, sample_noise, dec_latent) of sq, ns, b2
SEED_SCHEDULER_INPUTS = 1060     # one generator: scale_input_x, img2img.init_latents, img2img.noise
SEED_TXT2IMG = 1080
SEED_IMG2IMG = 1090
SEED_INIT_IMAGE = 1100
SEED_TRAJECTORY_X_T = 1160       # + scheduler index + 50 * prediction-type index
SEED_TRAJECTORY_STEPS = 1260     # the same offsets

# UNet case timesteps: I64 batch of 2, a 0-dim F32 Euler timestep (999 * 18/19 = the 2nd of 20 Euler
# steps), and an I64 timestep of shape (1,).
UNET_TIMESTEPS_B2 = [999, 17]
UNET_TIMESTEP_T0D = 999.0 * 18 / 19
UNET_TIMESTEP_B1 = [250]

TEXT_ENCODER_CASE_ROWS = [1, 0, 4, 9, 13, 38]   # rows of TOKENIZER_TEXTS
PROMPT = "a photo of a red barn, 4k, highly detailed"
NEGATIVE_PROMPT = "blurry, low quality, watermark"

# The 40 tokenizer strings of tests/data/golden/tokenizer/cases.json (escaped to keep this file ASCII).
TOKENIZER_TEXTS = [
    '',
    'a photo of a red barn, 4k, highly detailed',
    'A photo of an astronaut riding a horse on mars',
    'masterpiece, best quality, 1girl, solo, looking at viewer',
    "It's a dog's life, isn't it? They're here, we've won, I'm fine, you'll see, he'd go",
    'UPPERCASE WORDS And MiXeD CaSe',
    'numbers 1234567890 and 3.14159 and 1,000,000',
    'punctuation!!! ??? ... --- (parens) [brackets] {braces} <angle> @#$%^&*_+=|\\/~`',
    'caf\xe9 cr\xe8me br\xfbl\xe9e, na\xefve fa\xe7ade, \xc5ngstr\xf6m, Z\xfcrich',
    'emoji \U0001f600\U0001f389\U0001f525 and hearts \u2764\ufe0f \U0001f44d\U0001f3fd',
    'multiple     spaces\tand\ttabs',
    'line one\nline two\r\nline three',
    '   leading and trailing spaces   ',
    '\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 and \u4e2d\u6587 and \ud55c\uad6d\uc5b4',
    ('\u041f\u0440\u0438\u0432\u0435\u0442 \u043c\u0438\u0440, \u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac,'
     ' \u0627\u0644\u0639\u0631\u0628\u064a\u0629'),
    'hyphenated-words and under_scores and snake_case_names',
    '(masterpiece:1.2), [[blurry]], {{detailed}}, (((best quality)))',
    '\u201ccurly quotes\u201d and \u2018single\u2019 \u2014 em dash \u2013 en dash \u2026',
    'fullwidth \uff21\uff22\uff23\uff11\uff12\uff13 and ligatures \ufb01ne \ufb02ow',
    'html entities &amp; &lt;tag&gt; &quot;quoted&quot;',
    '<|startoftext|>literal special tokens<|endoftext|> inside text',
    'url https://example.com/path?query=1&x=2 and email user@example.com',
    'a',
    '!',
    "don't stop, can't won't shouldn't",
    "ALL'S WELL THAT ENDS WELL, THEY'RE HERE",
    'a photo of a cat.a photo of a dog',
    "rock'n'roll at five o'clock",
    '1girl, 2boys, 3D render, 8k uhd, f/1.8, 50mm, 16:9',
    'pneumonoultramicroscopicsilicovolcanoconiosis supercalifragilisticexpialidocious',
    'zero\u200bwidth and non\xa0breaking space',
    'a\u0301 combining accent vs \xe1 precomposed',
    'Mixed123Alnum abc123def 4ever x2',
    '\'quoted\' "double" \'s \'t \'re \'ve \'m \'ll \'d',
    'portrait of a woman, by greg rutkowski and alphonse mucha, trending on artstation',
    'a red cube on top of a blue sphere, studio lighting, octane render',
    "cat " * 75,  # 75 tokens: exactly fills bos + 75 tokens + eos
    "cat " * 76,  # 76 tokens: one too many, truncated
    ('a beautiful landscape painting of snowy mountains, a winding'
     ' river, dense pine forests, golden hour light, volumetric'
     ' fog, birds flying in the distance, a small wooden cabin'
     ' with smoke rising from the chimney, reflections in the'
     ' water, highly detailed, sharp focus, 8k, unreal engine,'
     ' concept art by famous artists, wide angle lens, dramatic'
     ' sky with towering clouds, a herd of deer grazing in a'
     ' meadow, wildflowers, morning dew on the grass, a stone'
     ' bridge crossing the river, mist rolling over the hills'),
    ('\U0001f338 cherry blossoms \U0001f338 under a full moon \U0001f315,'
     ' \U0001f338 cherry blossoms \U0001f338 under a full moon \U0001f315,'
     ' \U0001f338 cherry blossoms \U0001f338 under a full moon \U0001f315,'
     ' \U0001f338 cherry blossoms \U0001f338 under a full moon \U0001f315,'
     ' \U0001f338 cherry blossoms \U0001f338 under a full moon \U0001f315,'
     ' \U0001f338 cherry blossoms \U0001f338 under a full moon \U0001f315,'
     ' \U0001f338 cherry blossoms \U0001f338 under a full moon \U0001f315,'
     ' \U0001f338 cherry blossoms \U0001f338 under a full moon \U0001f315,'
     ' \U0001f338 cherry blossoms \U0001f338 under a full moon \U0001f315,'),
]


# ---------------------------------------------------------------------------------------------------------
# safetensors: a minimal writer and reader (numpy only)
#
# Layout: u64 little-endian header length N, N bytes of JSON {"__metadata__": {str: str}, name: {"dtype",
# "shape", "data_offsets": [begin, end]}} padded with spaces to a multiple of 8, then the raw little-endian
# tensor bytes, stored contiguously in sorted-name order (offsets relative to the data section).

_NUMPY_DTYPES = {  # safetensors dtype -> numpy dtype string
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U8": "u1", "BOOL": "?",
}


_TORCH_DTYPES = {  # torch dtype name -> safetensors dtype (bfloat16 is stored as F32)
    "torch.float64": "F64", "torch.float32": "F32", "torch.float16": "F16", "torch.bfloat16": "F32",
    "torch.int64": "I64", "torch.int32": "I32", "torch.int16": "I16", "torch.int8": "I8", "torch.uint8": "U8",
    "torch.bool": "BOOL",
}


def _to_numpy(value):
    """A C-contiguous little-endian numpy array of a numpy array or a torch tensor (bfloat16 -> float32)."""
    import numpy as np
    if hasattr(value, "detach"):  # torch.Tensor without importing torch here
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        value = value.contiguous().numpy()
    array = np.asarray(value, order="C")  # (ascontiguousarray would turn 0-dim into 1-dim)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return array


def _np_itemsize(dtype):
    import numpy as np
    return np.dtype(_NUMPY_DTYPES[dtype]).itemsize


def _safetensors_dtype(array):
    for name, np_dtype in _NUMPY_DTYPES.items():
        if array.dtype == np_dtype:
            return name
    raise TypeError(f"dtype {array.dtype} cannot be stored (supported: {', '.join(_NUMPY_DTYPES)})")


def write_safetensors(path, tensors, metadata=None):
    """Writes {name: numpy array or torch tensor} to `path`. `metadata` values are converted to str.

    Tensors are converted one at a time while writing, so a multi-GB state dict needs no second copy."""
    names = sorted(tensors)
    header = {}
    if metadata is not None:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    layout = []
    for name in names:
        value = tensors[name]
        if hasattr(value, "detach"):  # describe torch tensors without converting them yet
            if str(value.dtype) not in _TORCH_DTYPES:
                raise TypeError(f"{name}: dtype {value.dtype} cannot be stored")
            dtype = _TORCH_DTYPES[str(value.dtype)]
            shape = list(value.shape)
            nbytes = value.numel() * _np_itemsize(dtype)
        else:
            array = _to_numpy(value)
            dtype, shape, nbytes = _safetensors_dtype(array), list(array.shape), array.nbytes
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        layout.append((name, nbytes))
        offset += nbytes
    header_bytes = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)
    tmp_path = path + ".tmp"
    with open(tmp_path, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for name, nbytes in layout:
            data = _to_numpy(tensors[name]).tobytes()
            if len(data) != nbytes:
                raise RuntimeError(f"{name}: {len(data)} bytes written, {nbytes} announced")
            f.write(data)
    os.replace(tmp_path, path)


def read_safetensors(path):
    """Returns ({name: numpy array}, metadata dict or None); an independent check of the format."""
    import numpy as np
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    base = 8 + n
    metadata = header.pop("__metadata__", None)
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        array = np.frombuffer(blob[base + begin:base + end], dtype=_NUMPY_DTYPES[info["dtype"]])
        tensors[name] = array.reshape(info["shape"])
    return tensors, metadata


# ---------------------------------------------------------------------------------------------------------
# small helpers

def log(message):
    print(f"[export_golden] {message}", flush=True)


def write_json(path, obj):
    """Indented UTF-8 JSON (non-finite floats as -Infinity/NaN, as Python's json writes them)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
        f.write("\n")


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def place_file(src, dst, copy):
    """Symlinks (absolute target) or copies src to dst, replacing an existing dst."""
    if os.path.lexists(dst):
        os.remove(dst)
    if copy:
        shutil.copyfile(src, dst)
    else:
        os.symlink(os.path.realpath(src), dst)


def round_up(value, multiple):
    return -(-int(value) // multiple) * multiple


def version_tuple(text):
    parts = []
    for piece in str(text).split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def require_libraries():
    """Imports torch, diffusers and transformers, or exits with a clear message."""
    missing = [name for name in ("numpy", "torch", "diffusers", "transformers")
               if importlib.util.find_spec(name) is None]
    if missing:
        sys.exit("export_golden.py: missing Python package(s): " + ", ".join(missing) + ".\n"
                 "Run it on a machine with torch, diffusers 0.21.x, transformers and ftfy installed, e.g.\n"
                 "  pip install torch 'diffusers==0.21.4' 'transformers==4.33.*' 'ftfy==6.1.1'")
    import diffusers
    import torch
    import transformers
    if version_tuple(diffusers.__version__)[:2] != (0, 21):
        log(f"warning: diffusers {diffusers.__version__} (the reference data used 0.21.4); the pipeline "
            "recording relies on the 0.21 call structure (callback, randn_tensor, prepare_latents)")
    return torch, diffusers, transformers


def library_versions():
    import numpy
    import torch
    import diffusers
    import transformers
    versions = {
        "torch": torch.__version__, "numpy": numpy.__version__, "python": platform.python_version(),
        "diffusers": diffusers.__version__, "transformers": transformers.__version__,
    }
    for optional in ("huggingface_hub", "ftfy", "tokenizers"):
        if importlib.util.find_spec(optional) is None:
            versions[optional] = "not installed"
        else:
            module = __import__(optional)
            versions[optional] = getattr(module, "__version__", "installed")
    versions["safetensors"] = "self-written minimal writer (scripts/export_golden.py)"
    versions["torch_num_threads"] = str(__import__("torch").get_num_threads())
    return versions


class RandnRecorder:
    """Records every diffusers `randn_tensor` draw (module and function of the caller, tensor) while active.

    diffusers modules import randn_tensor by name, so each module's reference is replaced; the original
    function still draws, so generators advance exactly as without the recorder."""

    def __init__(self):
        self.draws = []
        self._patched = []

    def __enter__(self):
        try:
            from diffusers.utils.torch_utils import randn_tensor as original
        except ImportError:  # diffusers < 0.20
            from diffusers.utils import randn_tensor as original
        recorder = self

        def recording_randn_tensor(*args, **kwargs):
            out = original(*args, **kwargs)
            caller = sys._getframe(1)
            recorder.draws.append({"module": caller.f_globals.get("__name__", "?"),
                                   "function": caller.f_code.co_name, "tensor": out.detach().clone()})
            return out

        for name, module in list(sys.modules.items()):
            if name.startswith("diffusers") and module is not None \
                    and getattr(module, "randn_tensor", None) is original:
                setattr(module, "randn_tensor", recording_randn_tensor)
                self._patched.append((module, original))
        return self

    def __exit__(self, *exc):
        for module, original in self._patched:
            setattr(module, "randn_tensor", original)
        self._patched = []
        return False


@contextlib.contextmanager
def patched_method(obj, name, make_wrapper):
    """Temporarily shadows obj.name with make_wrapper(original bound method) (an instance attribute)."""
    original = getattr(obj, name)
    setattr(obj, name, make_wrapper(original))
    try:
        yield
    finally:
        delattr(obj, name)


# ---------------------------------------------------------------------------------------------------------
# the model: component folders, loading, weights

class Model:
    """A diffusers pipeline folder (or a golden pipeline/ folder whose pipeline.json names the components).

    Components are loaded lazily, once, in float32 on the CPU with the classic attention processor."""

    def __init__(self, path, variant=None):
        self.path = os.path.abspath(path) if path else None
        self.variant = variant
        self.dirs = {}
        self._cache = {}
        if path is None:
            return
        if not os.path.isdir(os.path.join(path, "unet")) and \
                os.path.isfile(os.path.join(path, "pipeline", "pipeline.json")):
            self.path = os.path.join(self.path, "pipeline")  # a golden root folder: use its pipeline/
        if os.path.isfile(os.path.join(self.path, "pipeline.json")) and \
                not os.path.isdir(os.path.join(self.path, "unet")):
            components = read_json(os.path.join(self.path, "pipeline.json"))["components"]
            for key, rel in components.items():
                self.dirs[key] = os.path.normpath(os.path.join(self.path, rel))
        else:
            if not os.path.isfile(os.path.join(path, "model_index.json")):
                log(f"warning: {path} has no model_index.json; expecting tokenizer/, text_encoder/, unet/, "
                    "vae/, scheduler/ sub-folders")
            for key in ("tokenizer", "text_encoder", "unet", "vae", "scheduler"):
                self.dirs[key] = os.path.join(self.path, key)

    def dir(self, key):
        d = self.dirs.get(key)
        if d is None or not os.path.isdir(d):
            raise SystemExit(f"export_golden.py: the model has no {key} folder (looked for {d})")
        return d

    def scheduler_config(self):
        """The model's scheduler_config.json without its "_" keys, or the reference base config."""
        path = os.path.join(self.dirs["scheduler"], "scheduler_config.json") if "scheduler" in self.dirs else None
        if path is None or not os.path.isfile(path):
            return dict(BASE_SCHEDULER_CONFIG)
        return {k: v for k, v in read_json(path).items() if not k.startswith("_")}

    def _variant_kwargs(self):
        return {"variant": self.variant} if self.variant else {}

    def tokenizer(self):
        if "tokenizer" not in self._cache:
            from transformers import CLIPTokenizer
            tok = CLIPTokenizer.from_pretrained(self.dir("tokenizer"))  # the slow (Python) tokenizer
            check_tokenizer_ids(tok, self.dir("tokenizer"))
            self._cache["tokenizer"] = tok
        return self._cache["tokenizer"]

    def text_encoder(self):
        if "text_encoder" not in self._cache:
            import torch
            import transformers
            from transformers import CLIPTextModel
            kwargs = dict(torch_dtype=torch.float32, **self._variant_kwargs())
            if version_tuple(transformers.__version__) >= (4, 36):
                kwargs["attn_implementation"] = "eager"  # plain softmax attention, not SDPA
            model = CLIPTextModel.from_pretrained(self.dir("text_encoder"), **kwargs)
            self._cache["text_encoder"] = model.float().eval()
        return self._cache["text_encoder"]

    def _diffusers_model(self, name, class_name):
        """Loads a diffusers component once, in float32 with the classic attention processor."""
        if name not in self._cache:
            import torch
            import diffusers
            model = getattr(diffusers, class_name).from_pretrained(self.dir(name), torch_dtype=torch.float32,
                                                                   **self._variant_kwargs())
            use_classic_attention(model, name)
            self._cache[name] = model.float().eval()
        return self._cache[name]

    def unet(self):
        return self._diffusers_model("unet", "UNet2DConditionModel")

    def vae(self):
        return self._diffusers_model("vae", "AutoencoderKL")


def use_classic_attention(model, what):
    from diffusers.models.attention_processor import AttnProcessor
    try:
        model.set_attn_processor(AttnProcessor())
    except AttributeError as e:
        log(f"warning: could not set AttnProcessor on the {what} ({e}); its attention may use SDPA")


def check_tokenizer_ids(tok, where):
    if tok.bos_token_id is None or tok.eos_token_id is None or tok.pad_token_id is None:
        raise SystemExit(
            f"export_golden.py: the tokenizer from {where} resolves bos/eos/pad ids to None. transformers "
            "4.33 without the `tokenizers` package has this bug (its fallback AddedToken lacks __str__): "
            "install `tokenizers`, or a transformers >= 4.34.")


WEIGHT_STEMS = {"text_encoder": "model", "unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model"}


def export_model_files(model, key, dst_dir, copy):
    """config.json (copied) + weights (symlinked/copied, or written from the loaded model) into dst_dir."""
    src_dir = model.dir(key)
    os.makedirs(dst_dir, exist_ok=True)
    shutil.copyfile(os.path.join(src_dir, "config.json"), os.path.join(dst_dir, "config.json"))
    stem = WEIGHT_STEMS[key]
    infix = f".{model.variant}" if model.variant else ""
    single = os.path.join(src_dir, f"{stem}{infix}.safetensors")
    if os.path.isfile(single):
        place_file(single, os.path.join(dst_dir, f"{stem}.safetensors"), copy)
        return f"{'copied' if copy else 'linked'} {single}"
    for index_name in (f"{stem}.safetensors.index{infix}.json", f"{stem}{infix}.safetensors.index.json"):
        index = os.path.join(src_dir, index_name)
        if not os.path.isfile(index):
            continue
        place_file(index, os.path.join(dst_dir, f"{stem}.safetensors.index.json"), copy)
        for shard in sorted(set(read_json(index)["weight_map"].values())):
            place_file(os.path.join(src_dir, shard), os.path.join(dst_dir, shard), copy)
        return f"{'copied' if copy else 'linked'} sharded {index}"
    # No safetensors file of that name (e.g. only pytorch_model.bin): write the loaded float32 weights.
    module = getattr(model, key)()
    out = os.path.join(dst_dir, f"{stem}.safetensors")
    write_safetensors(out, dict(module.state_dict()), {"format": "pt"})
    return f"wrote {out} from the loaded model (no {stem}{infix}.safetensors in {src_dir})"


def case_metadata(args, **extra):
    meta = {"generator": GENERATOR, "set": "export", "seed": str(args.seed)}
    if args.model:
        meta["source_model"] = os.path.abspath(args.model)
    meta.update({k: str(v) for k, v in extra.items()})
    return meta


# ---------------------------------------------------------------------------------------------------------
# tokenizer/

TOKENIZER_CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json")


def derived_tokenizer_configs(src_dir, pad_token, dst_dir):
    """Writes tokenizer_config.json + special_tokens_map.json of the model's tokenizer with another pad
    token, as CLIPTokenizer.save_pretrained writes them."""
    from transformers import CLIPTokenizer
    tok = CLIPTokenizer.from_pretrained(src_dir, pad_token=pad_token)
    os.makedirs(dst_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        for name in TOKENIZER_CONFIG_FILES:
            if os.path.isfile(os.path.join(tmp, name)):
                shutil.copyfile(os.path.join(tmp, name), os.path.join(dst_dir, name))
    special_map = os.path.join(dst_dir, "special_tokens_map.json")
    if not os.path.isfile(special_map):  # some transformers versions fold it into tokenizer_config.json
        write_json(special_map, {"bos_token": str(tok.bos_token), "eos_token": str(tok.eos_token),
                                 "pad_token": pad_token, "unk_token": str(tok.unk_token)})


def tokenizer_style(tok):
    """'sd1' (pad = eos, openai/clip-vit-large-patch14), 'sd2' (pad '!', stabilityai SD2.x) or 'other'."""
    if str(tok.pad_token) == str(tok.eos_token):
        return "sd1"
    if str(tok.pad_token) == "!":
        return "sd2"
    return "other"


def copy_tokenizer_files(src_dir, dst_dir, include_configs=True):
    os.makedirs(dst_dir, exist_ok=True)
    names = ["vocab.json", "merges.txt", "added_tokens.json"]
    if include_configs:
        names += list(TOKENIZER_CONFIG_FILES)
    for name in names:
        if os.path.isfile(os.path.join(src_dir, name)):
            shutil.copyfile(os.path.join(src_dir, name), os.path.join(dst_dir, name))


def export_tokenizer(ctx):
    from transformers import CLIPTokenizer
    args, model = ctx.args, ctx.model
    src = model.dir("tokenizer")
    out = os.path.join(args.out, "tokenizer")
    model_tok = model.tokenizer()
    style = tokenizer_style(model_tok)
    eos = str(model_tok.eos_token)

    # Main folder = SD1 convention (pad = eos), sd2/ = SD2 convention (pad "!"). The model's own
    # configuration files are kept verbatim where they already follow one of them.
    copy_tokenizer_files(src, out, include_configs=(style != "sd2"))
    if style == "sd2":
        derived_tokenizer_configs(src, eos, out)
        os.makedirs(os.path.join(out, "sd2"), exist_ok=True)
        for name in TOKENIZER_CONFIG_FILES:  # sd2/ holds only the two configuration files
            if os.path.isfile(os.path.join(src, name)):
                shutil.copyfile(os.path.join(src, name), os.path.join(out, "sd2", name))
    else:
        derived_tokenizer_configs(src, "!", os.path.join(out, "sd2"))
    if style == "other":
        log(f"note: the model's tokenizer pads with {model_tok.pad_token!r}; tokenizer/ keeps its configs, "
            "so ids_sd1 follow that pad token")
    ctx.model_tokenizer_style = style

    # Reload from the written folders, exactly as a pipeline would.
    sd1 = CLIPTokenizer.from_pretrained(out)
    with tempfile.TemporaryDirectory() as tmp:
        copy_tokenizer_files(out, tmp, include_configs=False)
        for name in TOKENIZER_CONFIG_FILES:
            shutil.copyfile(os.path.join(out, "sd2", name), os.path.join(tmp, name))
        sd2 = CLIPTokenizer.from_pretrained(tmp)
    check_tokenizer_ids(sd1, out)
    check_tokenizer_ids(sd2, os.path.join(out, "sd2"))
    max_length = sd1.model_max_length if sd1.model_max_length < 100000 else 77

    has_ftfy = importlib.util.find_spec("ftfy") is not None
    if not has_ftfy:
        log("WARNING: ftfy is not installed, so CLIPTokenizer cleans text with its BasicTokenizer fallback; "
            "collage implements the ftfy path and will differ on non-ASCII cases. pip install ftfy==6.1.1")
    call = dict(padding="max_length", max_length=max_length, truncation=True)
    cases = []
    for index, text in enumerate(TOKENIZER_TEXTS):
        untruncated = sd1(text)["input_ids"]
        padded = sd1(text, **call)
        cases.append({
            "index": index,
            "text": text,
            "tokens": sd1.tokenize(text),
            "tokens_sd2": sd2.tokenize(text),
            "ids_untruncated": list(untruncated),
            "num_tokens_untruncated": len(untruncated),
            "truncated": len(untruncated) > max_length,
            "ids_sd1": list(padded["input_ids"]),
            "attention_mask": list(padded["attention_mask"]),
            "ids_sd2": list(sd2(text, **call)["input_ids"]),
        })
    write_json(os.path.join(out, "cases.json"), {
        "description": "CLIP BPE tokenizer cases exported by scripts/export_golden.py from "
                       f"{src}. Layout as tests/data/golden/tokenizer (see its README.md).",
        "tokenizer": "transformers.CLIPTokenizer (slow), from_pretrained of this folder (sd1) and of "
                     "vocab.json/merges.txt + sd2/ (sd2)",
        "model_tokenizer_style": style,
        "text_cleaning": "ftfy" if has_ftfy else "BasicTokenizer fallback (ftfy not installed)",
        "max_length": max_length,
        "bos_token_id": sd1.bos_token_id,
        "eos_token_id": sd1.eos_token_id,
        "pad_token_id_sd1": sd1.pad_token_id,
        "pad_token_id_sd2": sd2.pad_token_id,
        "call": f'tokenizer(text, padding="max_length", max_length={max_length}, truncation=True)',
        "versions": ctx.versions,
        "cases": cases,
    })
    return f"{len(cases)} cases, model tokenizer style {style}, pad ids sd1 {sd1.pad_token_id} / " \
           f"sd2 {sd2.pad_token_id}"


# ---------------------------------------------------------------------------------------------------------
# text_encoder/

def export_text_encoder(ctx):
    import torch
    args, model = ctx.args, ctx.model
    out = os.path.join(args.out, "text_encoder")
    weights = export_model_files(model, "text_encoder", out, args.copy_weights)
    tok = model.tokenizer()
    texts = [TOKENIZER_TEXTS[i] for i in TEXT_ENCODER_CASE_ROWS]
    ids = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids.to(torch.int64)
    encoder = model.text_encoder()
    with torch.no_grad():
        result = encoder(ids, output_hidden_states=True, return_dict=True)
    tensors = {"input_ids": ids, "last_hidden_state": result.last_hidden_state,
               "pooler_output": result.pooler_output}
    for i, hidden in enumerate(result.hidden_states):
        tensors[f"hidden_states.{i}"] = hidden
    padding = {"sd1": "ids_sd1", "sd2": "ids_sd2"}.get(tokenizer_style(tok), "model tokenizer")
    write_safetensors(os.path.join(out, "cases.safetensors"), tensors, case_metadata(
        args, tokenizer_case_rows=json.dumps(TEXT_ENCODER_CASE_ROWS), padding=padding,
        num_hidden_states=len(result.hidden_states)))
    return f"{len(texts)} prompts, {len(result.hidden_states)} hidden states; {weights}"


# ---------------------------------------------------------------------------------------------------------
# unet/

def unet_debug_hooks(unet, store):
    """Forward hooks storing the intermediate outputs that the C++ UNet names in its debug map."""
    def keep(name, first_of_tuple=False):
        def hook(module, inputs, output):
            value = output[0] if (first_of_tuple and isinstance(output, (tuple, list))) else output
            store[name] = value.detach().clone()
        return hook

    handles = []
    for name in ("time_proj", "time_embedding", "conv_in", "mid_block", "conv_norm_out"):
        module = getattr(unet, name, None)
        if module is not None:
            handles.append(module.register_forward_hook(keep(name)))
    for i, block in enumerate(unet.down_blocks):
        handles.append(block.register_forward_hook(keep(f"down_blocks.{i}", first_of_tuple=True)))
    for i, block in enumerate(unet.up_blocks):
        handles.append(block.register_forward_hook(keep(f"up_blocks.{i}")))
    return handles


def export_unet(ctx):
    import numpy as np
    import torch
    args, model = ctx.args, ctx.model
    out = os.path.join(args.out, "unet")
    weights = export_model_files(model, "unet", out, args.copy_weights)
    unet = model.unet()
    config = unet.config
    if getattr(config, "addition_embed_type", None) or getattr(config, "class_embed_type", None):
        log("warning: this UNet needs added/class conditioning (SDXL, upscaler, ...); only SD1/SD2 "
            "UNets are covered, the cases will probably fail")
    factor = 2 ** (len(config.block_out_channels) - 1)
    size = round_up(args.small_latent, factor)
    width_ns = round_up(size * 3 // 2, factor)
    if width_ns == size:
        width_ns += factor
    cross_dim = config.cross_attention_dim
    if isinstance(cross_dim, (list, tuple)):
        cross_dim = cross_dim[0]
    channels = config.in_channels
    seq_len = 77

    gen = torch.Generator().manual_seed(args.seed + SEED_UNET_INPUTS)
    cases = {
        "b2": ((2, channels, size, size), torch.tensor(UNET_TIMESTEPS_B2, dtype=torch.int64)),
        "b2_t0d": ((2, channels, size, size), torch.tensor(float(np.float32(UNET_TIMESTEP_T0D)),
                                                           dtype=torch.float32)),
        "b1_ns": ((1, channels, size, width_ns), torch.tensor(UNET_TIMESTEP_B1, dtype=torch.int64)),
    }
    tensors = {}
    for name, (shape, timestep) in cases.items():  # draw order: b2, b2_t0d, b1_ns; sample then text
        sample = torch.randn(shape, generator=gen)
        hidden = torch.randn((shape[0], seq_len, cross_dim), generator=gen)
        debug = {}
        handles = unet_debug_hooks(unet, debug) if name == "b2" else []
        try:
            with torch.no_grad():
                result = unet(sample, timestep, encoder_hidden_states=hidden).sample
        finally:
            for h in handles:
                h.remove()
        tensors.update({f"{name}.sample": sample, f"{name}.timestep": timestep,
                        f"{name}.encoder_hidden_states": hidden, f"{name}.out": result})
        for key, value in debug.items():
            tensors[f"{name}.debug.{key}"] = value
    write_safetensors(os.path.join(out, "cases.safetensors"), tensors, case_metadata(
        args, input_seed=args.seed + SEED_UNET_INPUTS))
    return f"latent {size}x{size} and {size}x{width_ns}, {sum('.debug.' in k for k in tensors)} " \
           f"intermediates; {weights}"


# ---------------------------------------------------------------------------------------------------------
# vae/

def vae_factor(vae):
    return 2 ** (len(vae.config.block_out_channels) - 1)


def export_vae(ctx):
    import torch
    args, model = ctx.args, ctx.model
    out = os.path.join(args.out, "vae")
    weights = export_model_files(model, "vae", out, args.copy_weights)
    vae = model.vae()
    factor = vae_factor(vae)
    size = round_up(args.vae_size or min(args.small_latent * factor, 64), factor)
    width_ns = round_up(size * 3 // 2, factor)
    if width_ns == size:
        width_ns += factor
    in_channels = vae.config.in_channels

    gen = torch.Generator().manual_seed(args.seed + SEED_VAE_INPUTS)
    tensors = {}
    mismatch = 0.0
    for name, (batch, h, w) in {"sq": (1, size, size), "ns": (1, size, width_ns), "b2": (2, size, size)}.items():
        image = torch.rand((batch, in_channels, h, w), generator=gen) * 2 - 1   # uniform in [-1, 1)
        with torch.no_grad():
            posterior = vae.encode(image).latent_dist
            # The noise latent_dist.sample() draws: replay the generator state so the library makes the
            # sample itself, and keep the same draw as sample_noise.
            replay = torch.Generator()
            replay.set_state(gen.get_state())
            sample_noise = torch.randn(posterior.mean.shape, generator=gen)
            enc_sample = posterior.sample(generator=replay)
            mismatch = max(mismatch, float((enc_sample - (posterior.mean + posterior.std * sample_noise))
                                           .abs().max()))
            dec_latent = torch.randn(posterior.mean.shape, generator=gen)
            dec_out = vae.decode(dec_latent).sample
        tensors.update({
            f"{name}.image": image, f"{name}.enc_parameters": posterior.parameters,
            f"{name}.enc_mean": posterior.mean, f"{name}.enc_logvar": posterior.logvar,
            f"{name}.enc_std": posterior.std, f"{name}.sample_noise": sample_noise,
            f"{name}.enc_sample": enc_sample, f"{name}.dec_latent": dec_latent, f"{name}.dec_out": dec_out,
        })
    if mismatch > 0:
        log(f"warning: latent_dist.sample() differs from mean + std * sample_noise by {mismatch:.3g}")
    write_safetensors(os.path.join(out, "cases.safetensors"), tensors, case_metadata(
        args, downscale_factor=factor, input_seed=args.seed + SEED_VAE_INPUTS))
    return f"images {size}x{size} and {size}x{width_ns} (factor {factor}); {weights}"


# ---------------------------------------------------------------------------------------------------------
# schedulers/

def fake_model(x, t):
    """eps(x, t) = x * float32(0.3 cos(t/300)) + 0.1 sin(x), tensor math in float32."""
    import numpy as np
    import torch
    a = float(np.float32(0.3 * math.cos(float(t) / 300.0)))
    return x * a + 0.1 * torch.sin(x)


def schedule_record(scheduler, n):
    import torch
    scheduler.set_timesteps(n)
    ts = scheduler.timesteps
    is_float = ts.dtype.is_floating_point
    record = {
        "num_inference_steps": n,
        "timesteps": [float(t) if is_float else int(t) for t in ts.tolist()],
        "timesteps_dtype": str(ts.dtype).replace("torch.", ""),
        "init_noise_sigma": float(torch.as_tensor(scheduler.init_noise_sigma)),
    }
    if type(scheduler).__name__ in EULER_FAMILY:
        record["sigmas"] = [float(s) for s in scheduler.sigmas.tolist()]
    return record


def img2img_timesteps(scheduler, num_inference_steps, strength):
    """StableDiffusionImg2ImgPipeline.get_timesteps on this scheduler (after set_timesteps)."""
    import types
    from diffusers import StableDiffusionImg2ImgPipeline
    try:
        return StableDiffusionImg2ImgPipeline.get_timesteps(
            types.SimpleNamespace(scheduler=scheduler), num_inference_steps, strength, "cpu")
    except (TypeError, AttributeError):  # same rule, written out
        init_timestep = min(int(num_inference_steps * strength), num_inference_steps)
        t_start = max(num_inference_steps - init_timestep, 0)
        return scheduler.timesteps[t_start * scheduler.order:], num_inference_steps - t_start


def step_kwargs_for(scheduler, generator):
    import inspect
    params = inspect.signature(scheduler.step).parameters
    kwargs, names = {}, []
    if "eta" in params:
        kwargs["eta"] = 0.0
        names.append("eta=0.0")
    if "generator" in params:
        kwargs["generator"] = generator
        names.append("generator")
    return kwargs, ", ".join(names) or "none"


def run_trajectory(scheduler, num_steps, x_t_seed, step_seed):
    """20-step fake-model trajectory; returns (tensors, metadata)."""
    import torch
    scheduler.set_timesteps(num_steps)
    x_t_noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(x_t_seed))
    x = x_t_noise * scheduler.init_noise_sigma
    tensors = {"x_T_noise": x_t_noise, "x_T": x, "timesteps": scheduler.timesteps.clone()}
    if type(scheduler).__name__ in EULER_FAMILY:
        tensors["sigmas"] = scheduler.sigmas.clone()
    kwargs, kwargs_text = step_kwargs_for(scheduler, torch.Generator().manual_seed(step_seed))
    steps = []
    for i, t in enumerate(scheduler.timesteps):
        prefix = f"step_{i:02d}."
        with RandnRecorder() as recorder:
            model_input = scheduler.scale_model_input(x, t)
            model_output = fake_model(model_input, float(t))
            out = scheduler.step(model_output, t, x, **kwargs)
        tensors[prefix + "model_input"] = model_input
        tensors[prefix + "model_output"] = model_output
        if len(recorder.draws) > 1:
            raise RuntimeError(f"{type(scheduler).__name__} step {i} drew {len(recorder.draws)} tensors")
        drawn = bool(recorder.draws)
        if drawn:
            tensors[prefix + "noise"] = recorder.draws[0]["tensor"]
        x0 = getattr(out, "pred_original_sample", None)
        if x0 is not None:
            tensors[prefix + "pred_original_sample"] = x0
        x = out.prev_sample
        tensors[prefix + "prev_sample"] = x
        # EulerDiscrete draws its noise every step but only adds it when s_churn > 0 (default 0).
        used = (type(scheduler).__name__ != "EulerDiscreteScheduler") if drawn else None
        steps.append({"step": i, "timestep": float(t), "noise_drawn": drawn, "noise_used": used})
    tensors["x_final"] = x
    meta = {"x_T_seed": x_t_seed, "step_generator_seed": step_seed, "steps": steps,
            "num_steps": len(steps), "step_kwargs": kwargs_text}
    return tensors, meta


def export_schedulers(ctx):
    import diffusers
    import torch
    args, model = ctx.args, ctx.model
    out = os.path.join(args.out, "schedulers")
    os.makedirs(out, exist_ok=True)
    model_config = model.scheduler_config()
    base = {k: model_config.get(k, v) for k, v in BASE_SCHEDULER_CONFIG.items()}
    base["prediction_type"] = "epsilon"

    gen = torch.Generator().manual_seed(args.seed + SEED_SCHEDULER_INPUTS)
    scale_input_x = torch.randn((1, 4, 8, 8), generator=gen)
    init_latents = torch.randn((1, 4, 8, 8), generator=gen)
    noise = torch.randn((1, 4, 8, 8), generator=gen)
    extra = {"scale_input_x": scale_input_x, "img2img.init_latents": init_latents, "img2img.noise": noise}

    entries = {}
    for p_index, prediction in enumerate(PREDICTION_TYPES):
        for s_index, (prefix, class_name) in enumerate(SCHEDULERS):
            key = f"{prefix}_{prediction}"
            cls = getattr(diffusers, class_name)
            scheduler = cls.from_config(dict(base, prediction_type=prediction))
            resolved = {k: v for k, v in dict(scheduler.config).items()
                        if k not in ("_class_name", "_diffusers_version")}
            entry = {"class_name": class_name, "resolved_config": resolved, "order": scheduler.order}
            entry["steps_50"] = schedule_record(scheduler, 50)
            entry["steps_20"] = schedule_record(scheduler, 20)
            entry["steps_extra"] = schedule_record(scheduler, args.extra_steps)

            scheduler.set_timesteps(50)
            n = len(scheduler.timesteps)
            entry["scale_model_input_50"] = []
            for index in (0, n // 2, n - 1):
                scheduler.set_timesteps(50)  # fresh step state for every index
                t = scheduler.timesteps[index]
                name = f"{key}.scale_input_50.idx{index}"
                extra[name] = scheduler.scale_model_input(scale_input_x.clone(), t)
                entry["scale_model_input_50"].append({"index": index, "timestep": float(t), "tensor": name})

            entry["img2img_50"] = {}
            for strength in (0.3, 0.6, 0.8):
                scheduler = cls.from_config(dict(base, prediction_type=prediction))
                scheduler.set_timesteps(50)
                timesteps, effective = img2img_timesteps(scheduler, 50, strength)
                name = f"{key}.img2img.s{int(round(strength * 10)):02d}.noisy_latents"
                extra[name] = scheduler.add_noise(init_latents.clone(), noise.clone(), timesteps[:1])
                is_float = timesteps.dtype.is_floating_point
                entry["img2img_50"][str(strength)] = {
                    "timesteps": [float(t) if is_float else int(t) for t in timesteps.tolist()],
                    "num_inference_steps_effective": int(effective),
                    "first_timestep": float(timesteps[0]),
                    "add_noise_result": name,
                }

            scheduler = cls.from_config(dict(base, prediction_type=prediction))
            offset = s_index + 50 * p_index
            tensors, meta = run_trajectory(scheduler, 20, args.seed + SEED_TRAJECTORY_X_T + offset,
                                           args.seed + SEED_TRAJECTORY_STEPS + offset)
            file_name = f"{key}.safetensors"
            write_safetensors(os.path.join(out, file_name), tensors, case_metadata(
                args, scheduler=class_name, prediction_type=prediction))
            entry["trajectory_20"] = dict(file=file_name, **meta)
            entries[key] = entry

    train = diffusers.DDPMScheduler.from_config(base)
    write_safetensors(os.path.join(out, "train_schedule.safetensors"),
                      {"betas": train.betas.float(), "alphas_cumprod": train.alphas_cumprod.float()},
                      case_metadata(args))
    write_safetensors(os.path.join(out, "img2img_and_scale.safetensors"), extra,
                      case_metadata(args, input_seed=args.seed + SEED_SCHEDULER_INPUTS))
    write_json(os.path.join(out, "schedulers.json"), {
        "base_config": base,
        "fake_model": FAKE_MODEL_DESCRIPTION,
        "versions": ctx.versions,
        "trajectory_steps": 20,
        "extra_steps": args.extra_steps,
        "input_seed": args.seed + SEED_SCHEDULER_INPUTS,
        "schedulers": entries,
    })
    return f"{len(entries)} scheduler variants"


# ---------------------------------------------------------------------------------------------------------
# pipeline/

PIPELINE_SCHEDULERS = dict(SCHEDULERS)


def pipeline_component(ctx, key):
    """Folder the pipeline uses for `key`, relative to pipeline/: the top-level component folder when this
    run exported it from the same model, else a nested copy (not a top-level folder, so `collage parity`
    does not mistake it for a component with cases)."""
    args, model = ctx.args, ctx.model
    if key == "tokenizer":
        if "tokenizer" in ctx.exported and ctx.model_tokenizer_style in ("sd1", "other"):
            return "../tokenizer"
        copy_tokenizer_files(model.dir("tokenizer"), os.path.join(args.out, "pipeline", "tokenizer"))
        return "./tokenizer"
    if key in ctx.exported:
        return f"../{key}"
    export_model_files(model, key, os.path.join(args.out, "pipeline", key), args.copy_weights)
    return f"./{key}"


def record_pipeline_run(pipe, call_kwargs, steps_expected):
    """Runs pipe(**call_kwargs) recording the random draws, UNet calls, latents and the VAE decode."""
    import torch
    rec = {"unet": [], "latents": [], "prepare_latents": None, "add_noise": None, "decode": None}

    def wrap_unet(original):
        def forward(*args, **kwargs):
            sample = args[0] if len(args) > 0 else kwargs["sample"]
            timestep = args[1] if len(args) > 1 else kwargs["timestep"]
            hidden = args[2] if len(args) > 2 else kwargs["encoder_hidden_states"]
            result = original(*args, **kwargs)
            output = result[0] if isinstance(result, (tuple, list)) else result.sample
            rec["unet"].append({"sample": sample.detach().clone(),
                                "timestep": torch.as_tensor(timestep).detach().clone(),
                                "hidden": hidden.detach().clone(), "out": output.detach().clone()})
            return result
        return forward

    def wrap_prepare_latents(original):
        def prepare_latents(*args, **kwargs):
            latents = original(*args, **kwargs)
            rec["prepare_latents"] = latents.detach().clone()
            return latents
        return prepare_latents

    def wrap_add_noise(original):
        def add_noise(original_samples, noise, timesteps):
            rec["add_noise"] = (original_samples.detach().clone(), noise.detach().clone(),
                                torch.as_tensor(timesteps).detach().clone())
            return original(original_samples, noise, timesteps)
        return add_noise

    def wrap_decode(original):
        def decode(z, *args, **kwargs):
            result = original(z, *args, **kwargs)
            output = result[0] if isinstance(result, (tuple, list)) else result.sample
            rec["decode"] = (z.detach().clone(), output.detach().clone())
            return result
        return decode

    def callback(i, t, latents):
        rec["latents"].append(latents.detach().clone())

    with contextlib.ExitStack() as stack:
        stack.enter_context(patched_method(pipe.unet, "forward", wrap_unet))
        stack.enter_context(patched_method(pipe, "prepare_latents", wrap_prepare_latents))
        stack.enter_context(patched_method(pipe.scheduler, "add_noise", wrap_add_noise))
        stack.enter_context(patched_method(pipe.vae, "decode", wrap_decode))
        recorder = stack.enter_context(RandnRecorder())
        with torch.no_grad():
            result = pipe(**call_kwargs, callback=callback, callback_steps=1, output_type="pt")
    rec["draws"] = recorder.draws
    rec["image"] = result.images if torch.is_tensor(result.images) else torch.as_tensor(result.images)
    if len(rec["latents"]) != len(rec["unet"]) or len(rec["unet"]) != steps_expected:
        log(f"warning: {len(rec['unet'])} UNet calls, {len(rec['latents'])} callbacks, expected "
            f"{steps_expected} steps")
    return rec


def pipeline_tensors(pipe, rec, prompt, negative_prompt):
    import torch
    tok = pipe.tokenizer

    def ids(text):
        return tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True,
                   return_tensors="pt").input_ids.to(torch.int64)

    scaling = pipe.vae.config.scaling_factor
    tensors = {
        "prompt_input_ids": ids(prompt),
        "negative_prompt_input_ids": ids(negative_prompt),
        "prompt_embeds_cfg": rec["unet"][0]["hidden"],
        "timesteps": pipe.scheduler.timesteps.clone(),
        "initial_latents": rec["prepare_latents"],
        "final_latents": rec["latents"][-1],
        "vae_decode_input": rec["decode"][0],
        "vae_decode_output": rec["decode"][1],
        "image": rec["image"],
    }
    if type(pipe.scheduler).__name__ in EULER_FAMILY:
        tensors["sigmas"] = pipe.scheduler.sigmas.clone()
    for i, draw in enumerate(rec["draws"]):
        tensors[f"random_draw.{i:02d}"] = draw["tensor"]
    for i, call in enumerate(rec["unet"]):
        tensors[f"step_{i:02d}.unet_input"] = call["sample"]
        tensors[f"step_{i:02d}.unet_timestep"] = call["timestep"]
        tensors[f"step_{i:02d}.noise_pred_uncond_cond"] = call["out"]
    for i, latents in enumerate(rec["latents"]):
        tensors[f"step_{i:02d}.latents"] = latents
    if not torch.allclose(rec["decode"][0] * scaling, rec["latents"][-1], rtol=1e-5, atol=1e-5):
        log("warning: the VAE decode input is not final_latents / scaling_factor")
    return tensors


def run_record(rec, file_name, seed):
    return {
        "num_unet_calls": len(rec["unet"]),
        "step_timesteps": [float(c["timestep"]) for c in rec["unet"]],
        "random_draws": [{"name": f"random_draw.{i:02d}", "module": d["module"], "function": d["function"],
                          "shape": list(d["tensor"].shape)} for i, d in enumerate(rec["draws"])],
        "generator_seed": seed,
        "file": file_name,
    }


def export_pipeline(ctx):
    import diffusers
    import torch
    args, model = ctx.args, ctx.model
    out = os.path.join(args.out, "pipeline")
    os.makedirs(out, exist_ok=True)
    components = {key: pipeline_component(ctx, key) for key in ("text_encoder", "tokenizer", "unet", "vae")}
    components["scheduler"] = "./scheduler"

    scheduler_config = model.scheduler_config()
    scheduler_cls = getattr(diffusers, PIPELINE_SCHEDULERS[args.pipeline_scheduler])
    vae = model.vae()
    factor = vae_factor(vae)
    height = round_up(args.height or args.small_latent * factor, factor)
    width = round_up(args.width or args.height or args.small_latent * factor, factor)

    def make_pipeline(cls):
        pipe = cls(vae=vae, text_encoder=model.text_encoder(), tokenizer=model.tokenizer(), unet=model.unet(),
                   scheduler=scheduler_cls.from_config(scheduler_config), safety_checker=None,
                   feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    common = dict(prompt=args.prompt, negative_prompt=args.negative_prompt,
                  num_inference_steps=args.steps, guidance_scale=args.guidance)

    pipe = make_pipeline(diffusers.StableDiffusionPipeline)
    seed = args.seed + SEED_TXT2IMG
    rec = record_pipeline_run(pipe, dict(common, height=height, width=width,
                                         generator=torch.Generator().manual_seed(seed)), args.steps)
    write_safetensors(os.path.join(out, "txt2img.safetensors"),
                      pipeline_tensors(pipe, rec, args.prompt, args.negative_prompt), case_metadata(args))
    runs = {"txt2img": run_record(rec, "txt2img.safetensors", seed)}
    pipe.save_config(out)  # model_index.json (component classes; weights stay in the component folders)
    pipe.scheduler.save_config(os.path.join(out, "scheduler"))

    img_pipe = make_pipeline(diffusers.StableDiffusionImg2ImgPipeline)
    seed = args.seed + SEED_IMG2IMG
    init_gen = torch.Generator().manual_seed(args.seed + SEED_INIT_IMAGE)
    init_image = torch.randint(0, 256, (1, 3, height, width), generator=init_gen).float() / 255
    img_steps = min(int(args.steps * args.strength), args.steps)
    rec = record_pipeline_run(img_pipe, dict(common, image=init_image, strength=args.strength,
                                             generator=torch.Generator().manual_seed(seed)), img_steps)
    tensors = pipeline_tensors(img_pipe, rec, args.prompt, args.negative_prompt)
    tensors["init_image"] = init_image
    if rec["add_noise"] is not None:
        tensors["init_latents_scaled"], tensors["add_noise.noise"], tensors["add_noise.timestep"] = \
            rec["add_noise"]
    else:
        log("warning: img2img did not call scheduler.add_noise")
    write_safetensors(os.path.join(out, "img2img.safetensors"), tensors, case_metadata(args))
    runs["img2img"] = dict(run_record(rec, "img2img.safetensors", seed), strength=args.strength,
                           init_image_seed=args.seed + SEED_INIT_IMAGE)

    write_json(os.path.join(out, "pipeline.json"), {
        "prompt": args.prompt,
        "negative_prompt": args.negative_prompt,
        "guidance_scale": args.guidance,
        "height": height,
        "width": width,
        "scheduler": scheduler_cls.__name__,
        "scheduler_config": scheduler_config,
        "versions": ctx.versions,
        "runs": runs,
        "components": components,
    })
    return f"{height}x{width}, {args.steps} steps ({runs['img2img']['num_unet_calls']} for img2img at " \
           f"strength {args.strength}), {scheduler_cls.__name__}; components {components}"


# ---------------------------------------------------------------------------------------------------------
# --compare: an exported folder against another folder of the same layout (e.g. tests/data/golden)

CASE_FILES_SKIPPED = ("model.safetensors", "diffusion_pytorch_model.safetensors")
JSON_KEYS_IGNORED = {"versions", "description", "tokenizer", "components", "scheduler_config", "text_cleaning",
                     "model_tokenizer_style", "input_seed", "generator"}


def reference_folder(ref_root, out_root, name):
    """The folder of ref_root that corresponds to out_root/name (unet -> unet_sd1 or unet_sd2, ...)."""
    if os.path.isdir(os.path.join(ref_root, name)):
        return os.path.join(ref_root, name)
    candidates = sorted(d for d in os.listdir(ref_root) if d.startswith(name + "_"))
    ours = os.path.join(out_root, name, "config.json")
    for d in candidates:  # prefer the one with the same config
        theirs = os.path.join(ref_root, d, "config.json")
        if os.path.isfile(ours) and os.path.isfile(theirs) and read_json(ours) == read_json(theirs):
            return os.path.join(ref_root, d)
    return os.path.join(ref_root, candidates[0]) if candidates else None


def json_differences(ours, theirs, path=""):
    """(differing leaf paths, paths present only in the reference)."""
    diffs, missing = [], []
    if isinstance(ours, dict) and isinstance(theirs, dict):
        for key in theirs:
            if key in JSON_KEYS_IGNORED:
                continue
            if key not in ours:
                missing.append(f"{path}.{key}")
                continue
            d, m = json_differences(ours[key], theirs[key], f"{path}.{key}")
            diffs += d
            missing += m
    elif isinstance(ours, list) and isinstance(theirs, list) and len(ours) == len(theirs):
        for i, (a, b) in enumerate(zip(ours, theirs)):
            d, m = json_differences(a, b, f"{path}[{i}]")
            diffs += d
            missing += m
    elif ours != theirs and not (isinstance(ours, float) and isinstance(theirs, float)
                                 and math.isnan(ours) and math.isnan(theirs)):
        diffs.append(f"{path}: {json.dumps(ours)[:60]} vs {json.dumps(theirs)[:60]}")
    return diffs, missing


def compare_folders(out_root, ref_root, rtol=1e-4, atol=1e-5):
    import numpy as np
    problems = 0
    for name in sorted(os.listdir(out_root)):
        if not os.path.isdir(os.path.join(out_root, name)):
            continue
        ref_dir = reference_folder(ref_root, out_root, name)
        if ref_dir is None:
            print(f"  {name}/: no counterpart in {ref_root}")
            continue
        for dirpath, _, files in os.walk(os.path.join(out_root, name)):
            for file_name in sorted(files):
                ours = os.path.join(dirpath, file_name)
                rel = os.path.relpath(ours, os.path.join(out_root, name))
                theirs = os.path.join(ref_dir, rel)
                label = f"{name}/{rel}"
                if file_name in CASE_FILES_SKIPPED or os.path.islink(ours) or file_name.endswith(".tmp") \
                        or not os.path.isfile(theirs):
                    continue  # weights (linked or copied) and files without a counterpart
                if file_name.endswith(".json"):
                    diffs, missing = json_differences(read_json(ours), read_json(theirs))
                    status = "same" if not diffs else f"{len(diffs)} DIFFERENCES"
                    extra = f" ({len(missing)} reference-only fields)" if missing else ""
                    print(f"  {label:<52} {status}{extra}")
                    for d in diffs[:5]:
                        print(f"      {d}")
                    problems += len(diffs)
                elif file_name.endswith(".safetensors"):
                    a, _ = read_safetensors(ours)
                    b, _ = read_safetensors(theirs)
                    only_ref = sorted(set(b) - set(a))
                    only_ours = sorted(set(a) - set(b))
                    identical, worst, worst_name, bad = 0, 0.0, "", []
                    for key in sorted(set(a) & set(b)):
                        x, y = a[key], b[key]
                        if x.shape != y.shape or x.dtype != y.dtype:
                            bad.append(f"{key}: {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}")
                            continue
                        if x.tobytes() == y.tobytes():
                            identical += 1
                            continue
                        x64, y64 = x.astype(np.float64), y.astype(np.float64)
                        diff = float(np.abs(x64 - y64).max()) if x.size else 0.0
                        ref_max = float(np.abs(y64).max()) if y.size else 0.0
                        rel_err = diff / max(ref_max, 1e-30)
                        if rel_err > worst:
                            worst, worst_name = rel_err, key
                        if diff > atol + rtol * ref_max:
                            bad.append(f"{key}: max abs diff {diff:.3e} (max|ref| {ref_max:.3e})")
                    common = len(set(a) & set(b))
                    status = f"{identical}/{common} bit-identical"
                    if worst_name:
                        status += f", worst rel {worst:.2e} ({worst_name})"
                    if only_ref or only_ours:
                        status += f", {len(only_ref)} reference-only / {len(only_ours)} export-only names"
                    print(f"  {label:<52} {status}")
                    for line in bad[:5]:
                        print(f"      OUT OF TOLERANCE {line}")
                    for key in only_ref[:3]:
                        print(f"      missing here: {key}")
                    problems += len(bad)
    return problems


# ---------------------------------------------------------------------------------------------------------
# main

class Context:
    def __init__(self, args, model, versions):
        self.args, self.model, self.versions = args, model, versions
        self.exported = set()
        self.model_tokenizer_style = None


EXPORTERS = {
    "tokenizer": export_tokenizer, "text_encoder": export_text_encoder, "unet": export_unet,
    "vae": export_vae, "schedulers": export_schedulers, "pipeline": export_pipeline,
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Export reference tensors from a diffusers Stable Diffusion folder into the layout of "
                    "tests/data/golden, for `build/collage parity OUT`. Needs torch, diffusers 0.21.x, "
                    "transformers (and ftfy for the tokenizer cases).",
        epilog="example: python3 scripts/export_golden.py --model ~/models/stable-diffusion-v1-5 --out "
               "/tmp/golden_sd15 && build/collage parity /tmp/golden_sd15")
    parser.add_argument("--model", metavar="DIR",
                        help="diffusers pipeline folder (model_index.json, tokenizer/, text_encoder/, unet/, vae/, "
                             "scheduler/), or a golden folder (its pipeline/pipeline.json names the components); "
                             "not needed for --components schedulers")
    parser.add_argument("--out", metavar="OUT", required=True, help="output folder (created; files are replaced)")
    parser.add_argument("--components", default=",".join(COMPONENTS),
                        help="comma-separated subset of: " + ",".join(COMPONENTS) + " (default: all)")
    parser.add_argument("--height", type=int, default=None,
                        help="pipeline image height (default: --small-latent x the VAE factor, 128 for SD)")
    parser.add_argument("--width", type=int, default=None, help="pipeline image width (default: as --height)")
    parser.add_argument("--steps", type=int, default=10, help="pipeline inference steps (default 10)")
    parser.add_argument("--strength", type=float, default=0.6, help="img2img strength (default 0.6)")
    parser.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (7.5)")
    parser.add_argument("--prompt", default=PROMPT, help=f"pipeline prompt (default {PROMPT!r})")
    parser.add_argument("--negative-prompt", default=NEGATIVE_PROMPT,
                        help=f"pipeline negative prompt (default {NEGATIVE_PROMPT!r})")
    parser.add_argument("--pipeline-scheduler", default="euler_ancestral", choices=[k for k, _ in SCHEDULERS],
                        help="scheduler class of the pipeline runs, built from the model's scheduler config "
                             "(default euler_ancestral: exercises a random draw per step)")
    parser.add_argument("--seed", type=int, default=0,
                        help="base seed added to every fixed seed offset (0 = the seeds of tests/data/golden)")
    parser.add_argument("--small-latent", type=int, default=16,
                        help="latent size of the UNet cases and the default pipeline size (default 16)")
    parser.add_argument("--vae-size", type=int, default=None,
                        help="image size of the VAE cases (default: min(small-latent x factor, 64))")
    parser.add_argument("--extra-steps", type=int, default=25, help="schedulers: extra schedule length (25)")
    parser.add_argument("--variant", default=None, help="weights variant to load, e.g. fp16 (default: none)")
    parser.add_argument("--copy-weights", action="store_true",
                        help="copy the weight files into OUT instead of symlinking them")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1, as the reference data; more threads change "
                             "the float32 rounding slightly)")
    parser.add_argument("--compare", metavar="REF",
                        help="afterwards compare OUT with a folder of the same layout (e.g. tests/data/golden) "
                             "and exit 1 on values out of tolerance")
    args = parser.parse_args(argv)
    args.components = [c.strip() for c in args.components.split(",") if c.strip()]
    unknown = [c for c in args.components if c not in COMPONENTS]
    if unknown:
        parser.error(f"unknown component(s) {unknown}; choose from {COMPONENTS}")
    if args.model is None and set(args.components) - {"schedulers"}:
        parser.error("--model is required unless --components schedulers")
    if args.model is not None and not os.path.isdir(args.model):
        parser.error(f"--model {args.model} is not a folder")
    return args


def main(argv=None):
    args = parse_args(argv)
    torch, _, _ = require_libraries()
    torch.set_num_threads(args.threads)
    with contextlib.suppress(RuntimeError):  # only possible before any parallel work
        torch.set_num_interop_threads(1)
    torch.set_grad_enabled(False)
    os.makedirs(args.out, exist_ok=True)
    ctx = Context(args, Model(args.model, args.variant), library_versions())
    for component in COMPONENTS:  # fixed order: the pipeline reuses what the others exported
        if component not in args.components:
            continue
        start = time.time()
        log(f"{component} ...")
        summary = EXPORTERS[component](ctx)
        ctx.exported.add(component)
        log(f"{component}: {summary} ({time.time() - start:.1f} s)")
    log(f"done: {os.path.abspath(args.out)}")
    log(f"check with:  build/collage parity {args.out}")
    if args.compare:
        log(f"comparing with {args.compare} (rtol 1e-4, atol 1e-5 of max|ref|):")
        problems = compare_folders(args.out, args.compare)
        log(f"{problems} value(s) out of tolerance or differing JSON fields")
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
