"""Engine model of one vLLM-like GPU node, driven by the caller's clock.

What it models:

- **Continuous batching**, in one of two modes (``HardwareProfile.engine_mode``):

  - ``chunked`` (vLLM v1): each step decodes one token for every running sequence and
    prefills up to ``max_num_batched_tokens`` of waiting prompts, splitting a prompt
    across steps; its time is the decode step time plus the prefill chunk's compute
    time.
  - ``whole`` (vLLM v0 without chunked prefill): a step either prefills whole waiting
    prompts, up to ``max_num_batched_tokens`` (and at least one prompt, however long),
    or decodes; a prefill step takes the step overhead plus its compute time, and the
    running sequences wait through it.

  Steps with no prefill work are taken in bulk ("decode runs") up to the next event,
  with their total time summed in closed form, so a simulation costs per request,
  not per token.
- **Decode step time** = fixed + per-sequence + per-context-token terms
  (:meth:`HardwareProfile.decode_step_s`), memory-bandwidth bound.
- **KV cache** of fixed capacity in 16-token blocks. Full prompt blocks are keyed by a
  chain key (equal keys = equal prefix) and shared between requests; when no request
  references a block it stays cached and becomes evictable, least recently freed first
  (a request's blocks are freed tail first, as vLLM's free queue does). When a request
  finishes, the full blocks of its generated text are cached too, so the next turn of a
  conversation hits them. A request's private tail (partial prompt block and generated
  tokens) is counted in tokens and rounded up to blocks in aggregate: one block per 16
  tokens plus half a block of fragmentation per running sequence (an approximation).
  The block table is :class:`llmlb_fast._core.BlockCache` (``rust/llmlb-sim``): its
  per-block loops were most of a long run's time in Python.
- **Admission and preemption**: a waiting request is admitted when the blocks of its
  uncached prompt fit (evicting cached blocks if needed) and fewer than
  ``max_num_seqs`` run; when decoding needs a block and none can be freed, the most
  recently admitted sequence is preempted (recompute mode: its blocks are freed and it
  waits at the head of the queue to prefill its prompt and generated text again).
- **Deadlines**: a request that has not produced its first token by its deadline is
  cancelled by the caller (:meth:`Engine.cancel`) and counts as a timeout.

The engine is a state machine in virtual time: :meth:`submit` and :meth:`cancel` change
the queue, :meth:`next_time` says when the current step or decode run ends, and
:meth:`advance` processes everything up to a given time and returns what happened. The
discrete-event simulator and the live HTTP node drive the same class.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

from llmlb_fast._core import BlockCache
from llmlb_fast.sim.profiles import BLOCK_TOKENS, HardwareProfile


class RequestState(Enum):
    WAITING = "waiting"
    PREFILLING = "prefilling"
    RUNNING = "running"
    FINISHED = "finished"
    CANCELLED = "cancelled"


@dataclass(eq=False)
class SimRequest:
    """One request as the engine sees it.

    ``block_keys`` are the chain keys of the full 16-token blocks of the prompt followed
    by the generated text (at least ``prompt_tokens // 16`` of them; keys past the end
    of the prompt are the generated blocks cached when the request finishes).
    """

    request_id: str
    prompt_tokens: int
    output_tokens: int
    block_keys: Sequence[int]
    arrival_s: float = 0.0
    deadline_s: float = math.inf
    # Filled by the engine.
    state: RequestState = RequestState.WAITING
    cached_tokens: int = 0
    first_token_s: float | None = None
    finish_s: float | None = None
    generated: int = 0
    preemptions: int = 0
    _held: list[int] = field(default_factory=list, repr=False)
    _to_prefill: int = 0
    _prefill_pos: int = 0
    _private_tokens: int = 0
    _gen_base: int = 0
    _finish_step: int = 0
    _admitted_seq: int = 0
    _counted_hit: bool = False

    def __post_init__(self) -> None:
        if self.prompt_tokens < 1 or self.output_tokens < 1:
            raise ValueError(
                f"request {self.request_id!r}: prompt and output need >= 1 token, got "
                f"{self.prompt_tokens} and {self.output_tokens}"
            )
        if len(self.block_keys) < self.prompt_tokens // BLOCK_TOKENS:
            raise ValueError(
                f"request {self.request_id!r}: {len(self.block_keys)} block keys for a "
                f"{self.prompt_tokens}-token prompt (need {self.prompt_tokens // BLOCK_TOKENS})"
            )

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.arrival_s


class EventKind(Enum):
    FIRST_TOKEN = "first_token"
    FINISHED = "finished"


@dataclass(frozen=True)
class EngineEvent:
    kind: EventKind
    request: SimRequest
    time_s: float


@dataclass
class EngineCounters:
    """Cumulative counters (monotonic), sampled by monitors and /metrics."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    prefilled_tokens: int = 0
    generated_tokens: int = 0
    finished: int = 0
    cancelled: int = 0
    preemptions: int = 0
    evicted_blocks: int = 0
    busy_s: float = 0.0
    prefill_s: float = 0.0
    bytes_read: float = 0.0


@dataclass(frozen=True)
class EngineSnapshot:
    """What a vLLM engine and an NVML agent would report about the node now."""

    running: int
    waiting: int
    kv_usage: float
    kv_used_blocks: int
    kv_cached_blocks: int
    kv_capacity_blocks: int
    gpu_memory_used_bytes: float
    kv_cache_memory_bytes: float


class _Phase(Enum):
    IDLE = 0
    STEP = 1  # one step with prefill work (and one decode token per running sequence)
    DECODE_RUN = 2  # `run_steps` decode-only steps


class Engine:
    """One simulated GPU node."""

    def __init__(
        self, profile: HardwareProfile, *, node_id: str = "node", record_kv_events: bool = False
    ) -> None:
        self.profile = profile
        self.node_id = node_id
        self.cache = BlockCache(profile.kv_capacity_blocks, record_events=record_kv_events)
        self.counters = EngineCounters()
        self.waiting: deque[SimRequest] = deque()
        self.prefilling: list[SimRequest] = []
        self.running: list[SimRequest] = []
        self._waiting_live = 0
        self._finish_heap: list[tuple[int, int, SimRequest]] = []
        self._steps = 0  # decode steps taken since start
        self._context_tokens = 0  # sum of the context of running sequences
        self._private_tokens = 0  # tokens held outside shared full prompt blocks
        self._seq = 0
        self._phase = _Phase.IDLE
        self._phase_start = 0.0
        self._phase_end = 0.0
        self._run_steps = 0
        self._step_chunks: list[tuple[SimRequest, int]] = []
        self._step_decodes = False  # the current step also decodes the running sequences
        self._chunked = profile.engine_mode == "chunked"
        self._now = 0.0

    def take_kv_events(self) -> list[tuple[str, list[int], int | None]]:
        """What the prefix cache stored and evicted since the last call, in order (with
        ``record_kv_events``): vLLM's ``BlockStored`` / ``BlockRemoved``, by block key."""
        return self.cache.take_events()

    # Queries ----------------------------------------------------------------------
    def next_time(self) -> float | None:
        """When the current step (or decode run) ends; None when idle."""
        return None if self._phase is _Phase.IDLE else self._phase_end

    @property
    def num_running(self) -> int:
        return len(self.running) + len(self.prefilling)

    @property
    def num_waiting(self) -> int:
        return self._waiting_live

    def _private_blocks(self) -> int:
        sequences = len(self.running) + len(self.prefilling)
        return -(-self._private_tokens // BLOCK_TOKENS) + sequences // 2

    def _free_blocks(self) -> int:
        return self.cache.capacity - self.cache.cached_blocks - self._private_blocks()

    def used_blocks(self) -> int:
        """Blocks held by requests (vLLM's kv_cache_usage counts these)."""
        return self.cache.referenced_blocks + self._private_blocks()

    def generated_tokens(self, request: SimRequest, now: float) -> int:
        """Tokens ``request`` has generated by ``now`` (counting a decode run in progress)."""
        if request.state is not RequestState.RUNNING:
            return (
                request.output_tokens
                if request.state is RequestState.FINISHED
                else (request.generated)
            )
        done = self._generated_now(request)
        if self._phase is _Phase.DECODE_RUN:
            done += self._steps_within(now - self._phase_start)
        return min(done, request.output_tokens)

    def snapshot(self, now: float | None = None) -> EngineSnapshot:
        used = self.used_blocks()
        if now is not None and self._phase is _Phase.DECODE_RUN:
            # Part of a decode run has passed: count the blocks its tokens filled.
            done = self._steps_within(now - self._phase_start)
            used += (len(self.running) * done) // BLOCK_TOKENS
        capacity = self.cache.capacity
        used = min(used, capacity)
        block_bytes = self.profile.model.kv_bytes_per_token * BLOCK_TOKENS
        kv_bytes = used * block_bytes
        return EngineSnapshot(
            running=self.num_running,
            waiting=self._waiting_live,
            kv_usage=used / capacity,
            kv_used_blocks=used,
            kv_cached_blocks=self.cache.cached_blocks,
            kv_capacity_blocks=capacity,
            gpu_memory_used_bytes=self.profile.static_memory_bytes + kv_bytes,
            kv_cache_memory_bytes=kv_bytes,
        )

    # Commands ---------------------------------------------------------------------
    def submit(self, request: SimRequest, now: float) -> None:
        """Queues a request; the engine picks it up at the end of the current step."""
        if request.state is not RequestState.WAITING:
            raise ValueError(f"request {request.request_id!r} was already submitted")
        blocks = -(-(request.prompt_tokens + request.output_tokens) // BLOCK_TOKENS) + 1
        if blocks > self.cache.capacity:
            raise ValueError(
                f"request {request.request_id!r} needs {blocks} KV blocks; node "
                f"{self.node_id!r} has {self.cache.capacity}"
            )
        self.waiting.append(request)
        self._waiting_live += 1
        if self._phase is _Phase.IDLE:
            self._now = max(self._now, now)
            self._start_phase(self._now)
        elif self._phase is _Phase.DECODE_RUN:
            self._cut_decode_run(now)

    def cancel(self, request: SimRequest, now: float) -> bool:
        """Cancels a request that has not produced its first token yet. True if cancelled."""
        if request.first_token_s is not None:
            return False
        if request.state is RequestState.WAITING:
            self._waiting_live -= 1  # left in the deque, skipped when reached
        elif request.state is RequestState.PREFILLING:
            self.prefilling.remove(request)
            self._step_chunks = [(r, n) for r, n in self._step_chunks if r is not request]
            self._free(request)
        else:
            return False
        request.state = RequestState.CANCELLED
        request.finish_s = now
        self.counters.cancelled += 1
        return True

    def advance(self, now: float) -> list[EngineEvent]:
        """Processes every step that ends at or before ``now``."""
        events: list[EngineEvent] = []
        while self._phase is not _Phase.IDLE and self._phase_end <= now:
            end = self._phase_end
            self._finish_phase(end, events)
            self._now = end
            self._start_phase(end)
        self._now = max(self._now, now)
        return events

    # Phases -----------------------------------------------------------------------
    def _start_phase(self, now: float) -> None:
        preempted = False
        while self.running and not self._make_room(len(self.running)):
            self._preempt_latest()
            preempted = True
        if not preempted:
            self._admit(now)
        if self.prefilling:
            self._start_step(now)
        elif self.running:
            self._start_decode_run(now)
        else:
            self._phase = _Phase.IDLE

    def _start_step(self, now: float) -> None:
        p = self.profile
        if self._chunked:
            chunks = self._prefill_chunks(max(p.max_num_batched_tokens - len(self.running), 1))
        else:
            chunks = self._whole_prompts(p.max_num_batched_tokens)
        prefill_s = 0.0
        for request, n in chunks:
            context = request.prompt_tokens + request.generated - request._to_prefill
            prefill_s += p.prefill_time_s(n, context)
        self._step_decodes = self._chunked and bool(self.running)
        if self._step_decodes:
            step_s = p.decode_step_s(len(self.running), self._context_tokens)
        else:
            step_s = p.step_overhead_s
        self._step_chunks = chunks
        self._phase = _Phase.STEP
        self._phase_start = now
        self._phase_end = now + step_s + prefill_s
        self.counters.prefill_s += prefill_s

    def _prefill_chunks(self, budget: int) -> list[tuple[SimRequest, int]]:
        """Chunked mode: prompt tokens first come first served, the last one split."""
        chunks: list[tuple[SimRequest, int]] = []
        for request in self.prefilling:
            if budget <= 0:
                break
            n = min(request._to_prefill, budget)
            chunks.append((request, n))
            budget -= n
        return chunks

    def _whole_prompts(self, budget: int) -> list[tuple[SimRequest, int]]:
        """Whole mode: whole prompts first come first served, at least one."""
        chunks: list[tuple[SimRequest, int]] = []
        for request in self.prefilling:
            n = request._to_prefill
            if chunks and n > budget:
                break
            chunks.append((request, n))
            budget -= n
        return chunks

    def _start_decode_run(self, now: float) -> None:
        batch = len(self.running)
        heap = self._finish_heap
        while heap[0][2].state is not RequestState.RUNNING or (
            heap[0][2]._finish_step != heap[0][0]
        ):
            heapq.heappop(heap)  # left behind by a preempted request
        wanted = heap[0][0] - self._steps
        headroom = self.cache.capacity - self.cache.referenced_blocks - self._fragment_blocks()
        steps = min(wanted, (headroom * BLOCK_TOKENS - self._private_tokens) // batch)
        steps = max(steps, 1)  # _start_phase made room for one step
        self._make_room(batch * steps)
        self._phase = _Phase.DECODE_RUN
        self._phase_start = now
        self._run_steps = steps
        self._phase_end = now + self._run_time(steps)

    def _run_time(self, steps: int) -> float:
        """Time of ``steps`` decode steps with the current batch (context grows by B a step)."""
        p = self.profile
        batch = len(self.running)
        per_step = p.decode_fixed_s + batch * p.decode_per_seq_s
        per_ctx = p.decode_per_context_token_s
        return steps * (per_step + per_ctx * self._context_tokens) + per_ctx * batch * (
            steps * (steps - 1) / 2
        )

    def _steps_within(self, elapsed: float) -> int:
        """Whole decode steps of the current run finished within ``elapsed`` seconds."""
        if elapsed <= 0:
            return 0
        p = self.profile
        batch = len(self.running)
        per_ctx = p.decode_per_context_token_s
        a = p.decode_fixed_s + batch * p.decode_per_seq_s + per_ctx * self._context_tokens
        half_c = per_ctx * batch / 2
        # T(k) = half_c*k^2 + (a - half_c)*k; solve T(k) = elapsed.
        b = a - half_c
        if half_c == 0:
            k = elapsed / b
        else:
            k = (-b + math.sqrt(b * b + 4 * half_c * elapsed)) / (2 * half_c)
        steps = min(int(k), self._run_steps)
        while steps > 0 and self._run_time(steps) > elapsed:
            steps -= 1
        while steps < self._run_steps and self._run_time(steps + 1) <= elapsed:
            steps += 1
        return steps

    def _cut_decode_run(self, now: float) -> None:
        """A request arrived during a decode run: end the run at the next step boundary."""
        steps = min(self._steps_within(now - self._phase_start) + 1, self._run_steps)
        if steps < self._run_steps:
            self._run_steps = steps
            self._phase_end = self._phase_start + self._run_time(steps)

    def _phase_bytes(self) -> float:
        """HBM bytes the current phase reads: the weights and the KV cache, every step."""
        p = self.profile
        kv_bytes = p.model.kv_bytes_per_token
        if self._phase is _Phase.DECODE_RUN:
            steps = self._run_steps
            batch = len(self.running)
            return steps * p.model.weight_bytes + kv_bytes * (
                steps * self._context_tokens + batch * steps * (steps - 1) / 2
            )
        if self._phase is _Phase.STEP:
            decoded = self._context_tokens if self._step_decodes else 0
            return p.model.weight_bytes + kv_bytes * decoded
        return 0.0

    def activity(self, now: float) -> tuple[float, float]:
        """Cumulative busy seconds and HBM bytes read up to ``now``, the step in progress
        counted pro rata (so a long step does not look like an idle GPU)."""
        busy, read = self.counters.busy_s, self.counters.bytes_read
        if self._phase is not _Phase.IDLE and now > self._phase_start:
            length = self._phase_end - self._phase_start
            elapsed = min(now, self._phase_end) - self._phase_start
            busy += elapsed
            if length > 0:
                read += self._phase_bytes() * elapsed / length
        return busy, read

    def _finish_phase(self, end: float, events: list[EngineEvent]) -> None:
        self.counters.busy_s += end - self._phase_start
        self.counters.bytes_read += self._phase_bytes()
        if self._phase is _Phase.DECODE_RUN:
            self._decode(self._run_steps)
        else:
            if self._step_decodes:
                self._decode(1)
            self._prefill(self._step_chunks, end, events)
            self._step_chunks = []
        self._pop_finished(end, events)

    def _decode(self, steps: int) -> None:
        batch = len(self.running)
        self._steps += steps
        self._context_tokens += batch * steps
        self._private_tokens += batch * steps
        self.counters.generated_tokens += batch * steps

    def _prefill(
        self, chunks: list[tuple[SimRequest, int]], end: float, events: list[EngineEvent]
    ) -> None:
        for request, n in chunks:
            request._to_prefill -= n
            self.counters.prefilled_tokens += n
            if request._to_prefill > 0:
                continue
            self.prefilling.remove(request)
            request.state = RequestState.RUNNING
            if request.first_token_s is None:
                request.first_token_s = end
                request.generated = 1
                request._gen_base = 1
                request._private_tokens += 1
                self._private_tokens += 1
                self.counters.generated_tokens += 1
                events.append(EngineEvent(EventKind.FIRST_TOKEN, request, end))
            self._context_tokens += request.prompt_tokens + request.generated
            request._finish_step = self._steps + request.output_tokens - request.generated
            self.running.append(request)
            self._seq += 1
            heapq.heappush(self._finish_heap, (request._finish_step, self._seq, request))

    def _generated_now(self, request: SimRequest) -> int:
        if request.state is RequestState.RUNNING:
            return request.output_tokens - (request._finish_step - self._steps)
        return request.generated

    def _pop_finished(self, end: float, events: list[EngineEvent]) -> None:
        heap = self._finish_heap
        while heap and heap[0][0] <= self._steps:
            _, _, request = heapq.heappop(heap)
            if request.state is not RequestState.RUNNING or request._finish_step > self._steps:
                continue  # preempted since: a stale heap entry
            self.running.remove(request)
            self._context_tokens -= request.prompt_tokens + request.output_tokens
            self._free(request, cache_output=True)
            request.state = RequestState.FINISHED
            request.finish_s = end
            self.counters.finished += 1
            events.append(EngineEvent(EventKind.FINISHED, request, end))

    # Memory -----------------------------------------------------------------------
    def _fragment_blocks(self) -> int:
        return (len(self.running) + len(self.prefilling)) // 2

    def _make_room(self, extra_private_tokens: int) -> bool:
        """Evicts cached blocks so that ``extra_private_tokens`` more fit; False if they cannot."""
        need = -(-(self._private_tokens + extra_private_tokens) // BLOCK_TOKENS)
        need += self._fragment_blocks()
        cache = self.cache
        if cache.referenced_blocks + need > cache.capacity:
            return False
        overflow = cache.cached_blocks + need - cache.capacity
        if overflow > 0:
            cache.evict(overflow)
        return True

    def _admit(self, now: float) -> None:
        max_seqs = self.profile.max_num_seqs
        while self.waiting:
            request = self.waiting[0]
            if request.state is RequestState.CANCELLED:
                self.waiting.popleft()
                continue
            if len(self.running) + len(self.prefilling) >= max_seqs:
                return
            if not self._try_allocate(request):
                return
            self.waiting.popleft()
            self._waiting_live -= 1
            request.state = RequestState.PREFILLING
            self._seq += 1
            request._admitted_seq = self._seq
            self.prefilling.append(request)

    def _try_allocate(self, request: SimRequest) -> bool:
        """References the request's cached prefix and allocates the rest, if it fits."""
        context = request.prompt_tokens + request.generated  # generated > 0 after preemption
        full = request.prompt_tokens // BLOCK_TOKENS
        keys = request.block_keys
        cache = self.cache
        # The last prompt token is always computed, so a fully cached prompt recomputes it.
        hit = cache.match(keys, min(full, (request.prompt_tokens - 1) // BLOCK_TOKENS))
        private = context - full * BLOCK_TOKENS
        cache.acquire(keys[:hit])  # pinned first: eviction must not take them
        new_blocks = full - hit
        need = (
            cache.referenced_blocks
            + new_blocks
            + -(-(self._private_tokens + private) // BLOCK_TOKENS)
            + (len(self.running) + len(self.prefilling) + 1) // 2
        )
        if need > cache.capacity:
            cache.release(keys[:hit])
            return False
        overflow = cache.cached_blocks + need - cache.referenced_blocks - cache.capacity
        if overflow > 0:
            cache.evict(overflow)
        cache.acquire(keys[hit:full], keys[hit - 1] if hit else None)
        request._held = list(keys[:full])
        request._private_tokens = private
        request._gen_base = request.generated
        self._private_tokens += private
        request._to_prefill = context - hit * BLOCK_TOKENS
        if not request._counted_hit:
            request._counted_hit = True
            request.cached_tokens = hit * BLOCK_TOKENS
            self.counters.prompt_tokens += request.prompt_tokens
            self.counters.cached_tokens += request.cached_tokens
        return True

    def _preempt_latest(self) -> None:
        victim = max(self.running + self.prefilling, key=lambda r: r._admitted_seq)
        if victim.state is RequestState.RUNNING:
            self.running.remove(victim)
            generated = self._generated_now(victim)
            self._context_tokens -= victim.prompt_tokens + generated
            self._free(victim)
            victim.generated = generated
        else:
            self.prefilling.remove(victim)
            self._free(victim)
        victim.state = RequestState.WAITING
        victim.preemptions += 1
        self.counters.preemptions += 1
        self.waiting.appendleft(victim)
        self._waiting_live += 1

    def _free(self, request: SimRequest, *, cache_output: bool = False) -> None:
        generated = self._generated_now(request)
        self.cache.release(request._held)
        self._private_tokens -= request._private_tokens + (generated - request._gen_base)
        held = len(request._held)
        request._held = []
        request._private_tokens = 0
        if cache_output:
            request.generated = generated
            full = min((request.prompt_tokens + generated) // BLOCK_TOKENS, len(request.block_keys))
            if full > held:
                free = self.cache.capacity - self.cache.cached_blocks - self._private_blocks()
                parent = request.block_keys[held - 1] if held else None
                self.cache.insert_unreferenced(request.block_keys[held:full], free, parent)
        self.counters.evicted_blocks = self.cache.evicted
