"""An independent transcription of the reference multigrid semantics
(docs/method.md, PySlowFast), used by the tests as the oracle.

Written from the reference's formulas, separately from the package's code.
:func:`pyslowfast_long_cycle` transcribes PySlowFast's own loop line by line.
"""
import math


def long_cycle(T, S, E, milestones, long_factors, short_factors, short_cycle,
               epoch_factor):
    """[(lr_stage, (b, t, (h, w)), end_epoch)] for long cycles on."""
    H, W = S
    default = T * H * W
    all_shapes, avg_bs = [], []
    for t_f, s_f in long_factors:
        t = round(T * t_f)
        hw = (round(H * s_f), round(W * s_f))
        pairs = [(t, hw)]
        if short_cycle:
            pairs = [(t, (H * f, W * f)) for f in short_factors] + pairs
        shapes = [(round(default / (t * h * w)), t, (round(h), round(w)))
                  for t, (h, w) in pairs]
        all_shapes.append(shapes)
        avg_bs.append(sum(s[0] for s in shapes) / len(shapes))
    steps = [0] + list(milestones)
    sched, iters = [], 0
    for i in range(len(steps) - 1):
        for j, shapes in enumerate(all_shapes):
            ep = (steps[i + 1] - steps[i]) * avg_bs[j] / sum(avg_bs)
            iters += ep / avg_bs[j]
            sched.append((i, shapes[-1], ep))
    saving = steps[-1] / iters
    # Fine-tuning at the base shape of the last long-cycle entry (PySlowFast:
    # all_shapes[-1][2]); the default shape when the factors end in (1, 1).
    sched.append((len(steps) - 1, all_shapes[-1][-1],
                  (E - steps[-1]) / saving * avg_bs[-1]))
    x = E * epoch_factor / sum(s[2] for s in sched)
    out, total = [], 0
    for stage, shape, ep in sched:
        total += ep * x
        out.append((stage, shape, round(total)))
    return out


def short_only(T, S, E, milestones, epoch_factor):
    """Same format for short cycles only."""
    ends = [int(m * epoch_factor)
            for m in milestones] + [int(E * epoch_factor)]
    return [(i, (1, T, tuple(S)), end) for i, end in enumerate(ends)]


def base_at(schedule, epoch):
    for stage, shape, end in schedule:
        if end > epoch:
            return stage, shape
    return schedule[-1][0], schedule[-1][1]


def batches(B, base, S, short_factors, short_cycle):
    """[(per-GPU batch, (h, w))] cycled through within an epoch."""
    b, t, (h, w) = base
    cycle = []
    if short_cycle:
        for f in short_factors:
            k = round((h / (f * S[0]))**2)
            cycle.append((B * b * k, (round(f * S[0]), round(f * S[1]))))
    cycle.append((B * b, (h, w)))
    return cycle


def lr_factor(e,
              schedule,
              gamma,
              n_milestones,
              long_cycle_on,
              warmup=0,
              start=0.1):
    """Relative LR at fractional epoch e (warm-up included)."""

    def step(e):
        if long_cycle_on:
            ends = [s[2] for s in schedule]
            points = [0] + ends[:-1] + [(ends[-2] + ends[-1]) // 2]
            rels = [gamma**s[0] * s[1][0] for s in schedule]
            rels = rels[:-1] + [rels[-2], rels[-1]]
        else:
            points = [0] + [s[2] for s in schedule[:-1]]
            rels = [gamma**i for i in range(len(points))]
        idx = max(i for i, p in enumerate(points) if p <= e)
        return rels[idx]

    if e < warmup:
        return start + e * (step(warmup) - start) / warmup
    return step(e)


def epoch_batches(n, cycle_sizes, drop_last=True):
    if drop_last:
        return math.floor(n / (sum(cycle_sizes) / len(cycle_sizes)))
    count = seen = 0
    while seen < n:
        seen += cycle_sizes[count % len(cycle_sizes)]
        count += 1
    return count


LONG = ((0.25, 0.5**0.5), (0.5, 0.5**0.5), (0.5, 1), (1, 1))
SHORT = (0.5, 0.5**0.5)


def expected_run(n_train,
                 T,
                 S,
                 B,
                 E,
                 milestones,
                 base_lr,
                 warmup=0,
                 long_on=True,
                 short_on=True,
                 epoch_factor=1.5,
                 long_factors=LONG,
                 drop_last=True,
                 gamma=0.1):
    """[(epoch, iter, backbone input shape, lr)] of a whole run.

    ``n_train`` samples per GPU, square default size ``S``, per-GPU stock
    batch ``B``.
    """
    if long_on:
        sched = long_cycle(T, (S, S), E, milestones, long_factors, SHORT,
                           short_on, epoch_factor)
    else:
        sched = short_only(T, (S, S), E, milestones, epoch_factor)
    rows = []
    for epoch in range(sched[-1][2]):
        _, base = base_at(sched, epoch)
        cycle = batches(B, base, (S, S), SHORT, short_on)
        n = epoch_batches(n_train, [c[0] for c in cycle], drop_last)
        for i in range(n):
            size, (h, w) = cycle[i % len(cycle)]
            lr = base_lr * lr_factor(epoch + i / n, sched, gamma,
                                     len(milestones), long_on, warmup)
            rows.append((epoch, i, [size, 3, base[1], h, w], lr))
    return rows


def pyslowfast_long_cycle(T, S, E, milestones, gamma, long_factors,
                          short_factors, short_cycle, epoch_factor):
    """PySlowFast's ``MultigridSchedule.init_multigrid`` and
    ``get_long_cycle_schedule`` (``slowfast/utils/multigrid.py``, commit
    287ec00), transcribed line by line for a square ``S``.

    One change: with short cycles off PySlowFast's fine-tuning shape
    ``all_shapes[-1][2]`` raises IndexError; the last entry's only shape
    (index -1, the same entry as index 2 with short cycles) is taken.

    Returns:
        tuple: ``(schedule, STEPS, LRS, MAX_EPOCH)`` with ``schedule`` as
        PySlowFast's ``final_schedule``: ``(step_index, [b, t, s], end)``.
    """
    steps = [0] + list(milestones)  # cfg.SOLVER.STEPS, 0 included
    default_size = float(T * S**2)
    default_iters = steps[-1]
    avg_bs = []
    all_shapes = []
    for t_factor, s_factor in long_factors:
        base_t = int(round(T * t_factor))
        base_s = int(round(S * s_factor))
        if short_cycle:
            shapes = [[base_t, S * short_factors[0]],
                      [base_t, S * short_factors[1]], [base_t, base_s]]
        else:
            shapes = [[base_t, base_s]]
        shapes = [[
            int(round(default_size / (s[0] * s[1] * s[1]))), s[0], s[1]
        ] for s in shapes]
        avg_bs.append(sum(s[0] for s in shapes) / len(shapes))
        all_shapes.append(shapes)
    total_iters = 0
    schedule = []
    for step_index in range(len(steps) - 1):
        step_epochs = steps[step_index + 1] - steps[step_index]
        for long_cycle_index, shapes in enumerate(all_shapes):
            cur_epochs = step_epochs * avg_bs[long_cycle_index] / sum(avg_bs)
            cur_iters = cur_epochs / avg_bs[long_cycle_index]
            total_iters += cur_iters
            schedule.append((step_index, shapes[-1], cur_epochs))
    iter_saving = default_iters / total_iters
    final_step_epochs = E - steps[-1]
    ft_epochs = final_step_epochs / iter_saving * avg_bs[-1]
    schedule.append(
        (step_index + 1, all_shapes[-1][2 if short_cycle else -1], ft_epochs))
    x = E * epoch_factor / sum(s[-1] for s in schedule)
    final_schedule = []
    total_epochs = 0
    for s in schedule:
        epochs = s[2] * x
        total_epochs += epochs
        final_schedule.append((s[0], s[1], int(round(total_epochs))))
    # init_multigrid
    STEPS = [0] + [s[-1] for s in final_schedule]
    STEPS[-1] = (STEPS[-2] + STEPS[-1]) // 2
    LRS = [gamma**s[0] * s[1][0] for s in final_schedule]
    LRS = LRS[:-1] + [LRS[-2], LRS[-1]]
    MAX_EPOCH = final_schedule[-1][-1]
    return final_schedule, STEPS, LRS, MAX_EPOCH


# ---------------------------------------------------------------------------
# Non-step schedules (docs/schedules.md), transcribed from the documented
# rule: equal phases + fine-tuning for long cycles. The stock LR itself comes
# from MMEngine's schedulers (tests/mmengine_lr.py).
# ---------------------------------------------------------------------------
def cosine_phases(E, K, share):
    """Stock epochs ending the K equal long-cycle phases."""
    return [E * (1 - share) * (i + 1) / K for i in range(K)]


def cosine_lr_factor(e, schedule, stock_at, E, phases, scaling='linear'):
    """Long cycle + non-step LR at multigrid epoch e.

    ``schedule`` is :func:`long_cycle` run with ``phases`` as milestones;
    ``stock_at(epoch)`` is the stock LR factor at a fractional stock epoch.
    """
    bounds = [0] + list(phases) + [E]
    begin, spans = 0, []
    for i, (stage, shape, end) in enumerate(schedule):
        if i + 1 == len(schedule) or schedule[i + 1][0] != stage:
            if end > begin:
                spans.append((begin, end, bounds[stage], bounds[stage + 1]))
            begin = end
    stock_e = spans[-1][3]
    for lo, hi, s_lo, s_hi in spans:
        if e < hi:
            stock_e = s_lo + (e - lo) / (hi - lo) * (s_hi - s_lo)
            break
    _, base = base_at(schedule, int(e))
    b = base[0]
    scale = dict(linear=b, sqrt=b**0.5, none=1)[scaling]
    return scale * stock_at(stock_e)


def short_cycle_lr_factor(sizes, i, scaling='linear'):
    """``short_cycle_lr='scaled'``: the LR of the i-th batch of an epoch whose
    short cycle has batch ``sizes`` (base shape last) is scaled by its size
    over the base shape's, as ``lr_scaling`` scales ``b``."""
    k = sizes[i % len(sizes)] / sizes[-1]
    return dict(linear=k, sqrt=k**0.5, none=1)[scaling]
