"""The model side of the example inference service: tokenizer, Qwen2 model, request queue, generation.

Nothing here is downloaded. The model is ``transformers``' ``Qwen2ForCausalLM``
built from a ``Qwen2Config`` and randomly initialised from a fixed seed: the
architecture, the arithmetic per token and the memory are a real Qwen2's, the
words are noise. Two shapes:

* :func:`tiny_config` (default): 2 layers, hidden size 64, a 512-token vocabulary.
  About 0.1 M parameters, a few milliseconds per token on one CPU core, so a
  test can serve a few hundred real requests in seconds.
* :func:`qwen25_7b_config` (``--full-size``): the published Qwen2.5-7B-Instruct
  shape (28 layers, hidden 3584, 28 query / 4 key-value heads, vocabulary
  152064): 7.6 G parameters, 15.2 GB in bfloat16. For a GPU.

The tokenizer (:class:`ByteTokenizer`) needs no vocabulary file: UTF-8 bytes are
ids 3..258 (0 pad, 1 begin, 2 end of sequence), so a prompt's token count is its
byte count plus the chat template's. A generated id decodes to exactly one
printable character (its byte when that is printable ASCII, else a stand-in),
so every generated token is one non-empty streamed chunk.

The :class:`Engine` is a real queue: requests wait in a bounded FIFO
(``max_queue``) until one of ``concurrency`` workers takes them; each worker
runs one request at a time in a thread (torch releases the GIL in its kernels),
so with more requests than workers the queue time is real, and measured. A
full queue is refused at once (:class:`QueueFull`, HTTP 503) rather than grown.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import itertools
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
#: ids 3..258 are the 256 byte values.
BYTE_OFFSET = 3


class EngineError(Exception):
    """Base class of the engine's errors."""


class QueueFull(EngineError):
    """The request queue is at ``max_queue``: the request is refused, not queued (HTTP 503)."""


class EngineStopped(EngineError):
    """The engine is shutting down and takes no more requests (HTTP 503)."""


class GenerationFailed(EngineError):
    """The model raised while generating (HTTP 500, or an error event mid-stream)."""


def tiny_config() -> Qwen2Config:
    """A Qwen2 small enough for CPU tests: ~0.1 M parameters, 2048 positions.

    The vocabulary (512) covers the 259 byte-tokenizer ids with room to spare,
    as a real model's vocabulary is padded past its tokenizer's.
    """
    return Qwen2Config(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )


def qwen25_7b_config(max_positions: int = 32768) -> Qwen2Config:
    """The Qwen2.5-7B-Instruct shape, as its published config.json gives it (7.6 G parameters)."""
    return Qwen2Config(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        max_position_embeddings=max_positions,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )


class ByteTokenizer:
    """UTF-8 bytes in, one printable character per id out; no vocabulary file.

    ``encode`` is exact (every byte one id). ``decode_token`` maps an id the
    random model picked to one character: the byte itself when it is printable
    ASCII, else a printable stand-in, so that a streamed token is never empty
    and never half a UTF-8 sequence.
    """

    #: ChatML, the template Qwen2.5-Instruct uses.
    TEMPLATE_TURN = "<|im_start|>{role}\n{content}<|im_end|>\n"
    TEMPLATE_REPLY = "<|im_start|>assistant\n"

    def encode(self, text: str) -> list[int]:
        return [b + BYTE_OFFSET for b in text.encode("utf-8")]

    def apply_chat_template(self, messages: Sequence[tuple[str, str]]) -> list[int]:
        """(role, content) turns -> prompt ids, ending where the assistant's reply begins."""
        text = "".join(self.TEMPLATE_TURN.format(role=role, content=content) for role, content in messages)
        return [BOS_ID, *self.encode(text + self.TEMPLATE_REPLY)]

    def decode_token(self, token_id: int) -> str:
        byte = token_id - BYTE_OFFSET
        if 32 <= byte < 127:
            return chr(byte)
        return chr(32 + token_id % 95)


def build_model(config: Qwen2Config, *, seed: int, device: str, dtype: torch.dtype) -> Qwen2ForCausalLM:
    """Qwen2ForCausalLM with random weights drawn from ``seed``, built directly on ``device``.

    Built under ``torch.device(device)`` so a 7B model's 15 GB of weights are
    initialised on the GPU and never staged in host memory.
    """
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen2ForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


#: transformers 5 renamed ``past_key_values`` to ``cache`` (the old name warns,
#: and is to be removed); older releases only know the old one.
_CACHE_KWARG = "cache" if "cache" in inspect.signature(Qwen2ForCausalLM.forward).parameters else "past_key_values"


@dataclass
class Job:
    """One request in the engine: what to generate, and the events the handler reads.

    ``events`` receives ``("started",)`` when a worker takes the job, one
    ``("token", id, text)`` per generated token, then ``("done", finish_reason)``
    or ``("error", message)``. It is bounded by construction: at most
    ``max_tokens + 2`` events are ever put on it.
    """

    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 0.0
    seed: int | None = None
    ignore_eos: bool = False
    id: int = 0
    enqueued: float = 0.0
    started: float | None = None
    finished: float | None = None
    completion_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    events: asyncio.Queue[tuple[Any, ...]] = field(default_factory=asyncio.Queue)

    @property
    def queue_ms(self) -> float | None:
        return None if self.started is None else (self.started - self.enqueued) * 1000.0

    @property
    def inference_ms(self) -> float | None:
        if self.started is None or self.finished is None:
            return None
        return (self.finished - self.started) * 1000.0

    def cancel(self) -> None:
        """The client went away: the worker stops at its next token (or skips the job if queued)."""
        self.cancelled.set()


class Engine:
    """A bounded FIFO of :class:`Job` and ``concurrency`` workers generating one job each at a time.

    ``start()`` and ``stop()`` run on the server's event loop (its lifespan).
    ``submit()`` queues a job or raises :class:`QueueFull` / :class:`EngineStopped`.
    """

    def __init__(self, model: Qwen2ForCausalLM, tokenizer: ByteTokenizer, *, concurrency: int,
                 max_queue: int, seed: int = 0) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self.model = model
        self.tokenizer = tokenizer
        self.concurrency = concurrency
        self.max_queue = max_queue
        self.seed = seed
        self.device = next(model.parameters()).device
        self.context_length = int(model.config.max_position_embeddings)
        self._ids = itertools.count(1)
        self._queue: asyncio.Queue[Job] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self.busy = 0

    @property
    def waiting(self) -> int:
        return 0 if self._queue is None else self._queue.qsize()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue(maxsize=self.max_queue)
        self._executor = concurrent.futures.ThreadPoolExecutor(self.concurrency, thread_name_prefix="generate")
        self._workers = [asyncio.create_task(self._worker(), name=f"engine-worker-{i}")
                         for i in range(self.concurrency)]

    async def stop(self) -> None:
        """Refuse new jobs, cancel queued and running ones, wait for the workers' threads."""
        self._stopping = True
        if self._queue is not None:
            while not self._queue.empty():
                job = self._queue.get_nowait()
                job.cancel()
                job.events.put_nowait(("error", "server shutting down"))
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    def submit(self, job: Job) -> Job:
        if self._queue is None or self._stopping:
            raise EngineStopped("the engine is not running")
        job.id = next(self._ids)
        job.enqueued = time.perf_counter()
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise QueueFull(f"{self.max_queue} requests already waiting") from None
        return job

    async def _worker(self) -> None:
        assert self._queue is not None and self._loop is not None
        while True:
            job = await self._queue.get()
            if job.cancelled.is_set():
                continue
            job.started = time.perf_counter()
            job.events.put_nowait(("started",))
            self.busy += 1
            try:
                await self._loop.run_in_executor(self._executor, self._generate, job)
            except Exception as exc:  # noqa: BLE001 - becomes the request's error, the worker lives on
                job.finished = time.perf_counter()
                job.events.put_nowait(("error", f"{type(exc).__name__}: {exc}"))
            else:
                job.events.put_nowait(("done", job.finish_reason))
            finally:
                self.busy -= 1

    def _generate(self, job: Job) -> None:
        """Greedy (or seeded sampling) decoding with a KV cache; runs in a worker thread."""
        assert self._loop is not None
        put = self._loop.call_soon_threadsafe
        generator = None
        if job.temperature > 0:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(job.seed if job.seed is not None else self.seed * 1_000_003 + job.id)
        ids = torch.tensor([job.prompt_ids], dtype=torch.long, device=self.device)
        cache: Any = None
        reason = "length"
        with torch.inference_mode():
            for _ in range(job.max_tokens):
                if job.cancelled.is_set():
                    reason = "cancelled"
                    break
                out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1, **{_CACHE_KWARG: cache})
                cache = getattr(out, _CACHE_KWARG, None) or out.past_key_values
                logits = out.logits[0, -1].float()
                if generator is None:
                    token = int(torch.argmax(logits))
                else:
                    probs = torch.softmax(logits / job.temperature, dim=-1)
                    token = int(torch.multinomial(probs, 1, generator=generator))
                job.completion_ids.append(token)
                if token == EOS_ID and not job.ignore_eos:
                    reason = "stop"
                    break
                put(job.events.put_nowait, ("token", token, self.tokenizer.decode_token(token)))
                ids = torch.tensor([[token]], dtype=torch.long, device=self.device)
        job.finish_reason = reason
        job.finished = time.perf_counter()
