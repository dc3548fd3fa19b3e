"""The samplers' draw and one-token decode steps: the inverse-CDF draw against its distribution, the
decode steps against the blocks they stand for, and the compiled pixel loop and AR position step against
the eager ones."""
import sys

import pytest
import torch
from frame import tiny_model
from test_conditional import ALPHA, chi_square_p

import fractalgen
from fractalgen.nn import LlamaBlock, LlamaStep, Projection, ViTBlock, ViTStep, rotary_table_2d, rotary_turns
from fractalgen.sampling import SampleContext, draw


def test_draw_follows_the_distribution_of_its_logits():
    """Each row draws value i with probability softmax(logits)[i]: a chi-square fit over many uniforms,
    for a peaky and a flat row; the log-probability returned is the drawn value's."""
    g = torch.Generator().manual_seed(0)
    n = 40000
    for scale in (3.0, 0.3):
        logits = torch.randn(256, generator=g) * scale
        ids, logp = draw(logits.expand(n, -1), torch.rand(n, generator=g))
        probs = torch.softmax(logits.double(), -1)
        assert chi_square_p(ids, probs) > ALPHA
        torch.testing.assert_close(logp.double(), probs.log()[ids], rtol=1e-5, atol=1e-5)
    # the test can fail: the same draws do not fit a slightly other distribution
    shifted = torch.softmax(logits.double() + 0.3 * torch.arange(256) / 256, -1)
    assert chi_square_p(ids, shifted) < ALPHA


def test_draw_is_the_inverse_of_the_distribution_function():
    """u in [cdf(i-1), cdf(i)) draws i; values of probability 0 are never drawn, not even at u = 0 or u -> 1."""
    probs = torch.tensor([0.0, 0.25, 0.0, 0.5, 0.25, 0.0])
    logits = probs.log()  # -inf where 0
    u = torch.tensor([0.0, 0.2499, 0.25, 0.7499, 0.75, 1 - 2**-24])
    ids, logp = draw(logits.expand(len(u), -1), u)
    assert ids.tolist() == [1, 1, 3, 3, 4, 4]
    assert torch.equal(logp, probs.log()[ids])


def test_decode_steps_equal_the_blocks_over_the_whole_sequence():
    """Feeding tokens one at a time through LlamaStep / ViTStep gives the causal block's outputs."""
    torch.manual_seed(0)
    R, T, D, H = 3, 5, 32, 4
    x = torch.randn(R, T, D)
    llama = LlamaBlock(D, H, 0.0, 0.0).eval()
    table = rotary_table_2d(2, D // H, num_prefix=1)  # 1 + 2x2 positions
    vit = ViTBlock(D, H).eval()
    with torch.no_grad():
        full_llama, full_vit = llama(x, table), vit(x, causal=True)
        llama_step, vit_step = LlamaStep(llama, R, T), ViTStep(vit, R, T)
        turns = rotary_turns(table)
        stepped_llama = torch.stack([llama_step(x[:, t], t, turns[t]) for t in range(T)], 1)
        stepped_vit = torch.stack([vit_step(x[:, t], t) for t in range(T)], 1)
    torch.testing.assert_close(stepped_llama, full_llama, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stepped_vit, full_vit, rtol=1e-5, atol=1e-5)


def test_decode_steps_at_tensor_positions_equal_the_blocks():
    """The steps a compiled AR level runs: positions as tensors (1,), every slot scored and those ahead
    masked, rotary turns as real pairs: the causal blocks' outputs too."""
    torch.manual_seed(0)
    R, T, D, H = 3, 5, 32, 4
    x = torch.randn(R, T, D)
    llama, vit = LlamaBlock(D, H, 0.0, 0.0).eval(), ViTBlock(D, H).eval()
    table = rotary_table_2d(2, D // H, num_prefix=1)
    positions, turns = torch.arange(T)[:, None], torch.view_as_real(rotary_turns(table))
    with torch.no_grad():
        llama_step, vit_step = LlamaStep(llama, R, T), ViTStep(vit, R, T)
        stepped_llama = torch.stack([llama_step(x[:, t], positions[t], turns[t]) for t in range(T)], 1)
        stepped_vit = torch.stack([vit_step(x[:, t], positions[t]) for t in range(T)], 1)
        torch.testing.assert_close(stepped_llama, llama(x, table), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(stepped_vit, vit(x, causal=True), rtol=1e-5, atol=1e-5)
        # Every slot is written now: position 1 again sees only slots 0 and 1 through the mask, and the
        # slots ahead without it.
        torch.testing.assert_close(vit_step(x[:, 1], positions[1]), stepped_vit[:, 1], rtol=1e-5, atol=1e-5)
        vit_step.attn.cache.positions.fill_(-1)
        assert not torch.allclose(vit_step(x[:, 1], positions[1]), stepped_vit[:, 1], atol=1e-3)


def test_the_first_position_takes_its_own_value_exactly():
    """At position 0 a step has one slot to attend to: its weight is exactly 1, and the step takes the value
    as it is (no product, no softmax). The same bits as the written-out attention over every slot."""
    torch.manual_seed(0)
    R, T, D, H = 3, 5, 32, 4
    x = torch.randn(R, D)
    llama, vit = LlamaBlock(D, H, 0.0, 0.0).eval(), ViTBlock(D, H).eval()
    turns = rotary_turns(rotary_table_2d(2, D // H, num_prefix=1))
    with torch.no_grad():
        for block, step, turn in ((llama, LlamaStep, turns[0]), (vit, ViTStep, None)):
            shortcut, written_out = step(block, R, T), step(block, R, T)
            args = () if turn is None else (turn,)
            real_args = () if turn is None else (torch.view_as_real(turn),)
            assert torch.equal(shortcut(x, 0, *args), written_out(x, torch.tensor([0]), *real_args))


def test_projection_is_the_linear_layer():
    linear = torch.nn.Linear(7, 5)
    x = torch.randn(4, 7)
    with torch.no_grad():
        torch.testing.assert_close(Projection.of(linear)(x), linear(x))
        torch.testing.assert_close(Projection(linear.weight)(x), x @ linear.weight.t())


def _pixel_context(seed=0):
    return SampleContext(guided=True, temperature=1.3, filter_threshold=1e-2, num_iter=(1, 1),
                         generator=torch.Generator().manual_seed(seed))


def test_the_pixel_loop_traces_as_one_graph():
    """What compile=True compiles (and CUDA's reduce-overhead captures) has no graph break: a pure function
    of tensors. Checked with dynamo's eager backend, which needs no compiler."""
    model = tiny_model("tiny_ar", perturb=0.3)
    head = model.pixel_head
    cond, guidance, uniforms = torch.randn(6, head.cond_proj.in_features), torch.full((3,), 2.0), torch.rand(3, 3)
    with torch.no_grad():
        eager = head.channels_step(cond, guidance, uniforms[:head.channels], 1.3, True, 1e-2)
        traced = torch.compile(head.channels_step, fullgraph=True, backend="eager")(
            cond, guidance, uniforms[:head.channels], 1.3, True, 1e-2)
    assert torch.equal(traced[0], eager[0]) and torch.equal(traced[1], eager[1])


def _cpu_compiler_missing() -> bool:
    """Whether compile=True would stop here for want of the C++ compiler inductor runs (the library's own check)."""
    try:
        fractalgen.sampling.check_cpu_compiler()
    except fractalgen.sampling.CompilerMissing:
        return True
    return False


def _position_steps(level, rows: int, positions_as_tensors: bool):
    """An AR level's position step for `rows` rows at every position: (positions, fresh steps, rotary turns),
    positions as ints or as tensors (1,) (with the turns as real pairs), as eager or compiled sampling passes them."""
    N = level.config.seq_len
    steps = [LlamaStep(block, rows, N) for block in level.blocks]
    turns = rotary_turns(level.rotary("cpu"))
    if positions_as_tensors:
        return list(torch.arange(N)[:, None]), steps, torch.view_as_real(turns)
    return list(range(N)), steps, turns


def test_the_ar_position_step_traces_as_one_graph_for_every_position():
    """What compile=True compiles for an AR level: one graph, without breaks, reused at every position
    (dynamo's eager backend, which needs no compiler, counts the graphs)."""
    from torch._dynamo.testing import CompileCounter

    level = tiny_model("tiny_ar", perturb=0.3).levels[1]
    tokens = torch.randn(4, level.config.seq_len, level.config.width)
    counter = CompileCounter()
    step = torch.compile(level.position_step, fullgraph=True, backend=counter, dynamic=False)
    with torch.no_grad():
        eager_at, eager_steps, eager_turns = _position_steps(level, 4, positions_as_tensors=False)
        at, steps, turns = _position_steps(level, 4, positions_as_tensors=True)
        for i, (t_int, t) in enumerate(zip(eager_at, at, strict=True)):
            torch.testing.assert_close(step(tokens[:, i], t, steps, turns),
                                       level.position_step(tokens[:, i], t_int, eager_steps, eager_turns),
                                       rtol=1e-5, atol=1e-5)
    assert counter.frame_count == 1


def _mar_pass_inputs(level, rows: int, revealed: int, g: torch.Generator):
    """Inputs of a MAR level's `revealed_conds`: raw patches, a mask, conditions, and `revealed` positions per row."""
    N, C, p = level.config.seq_len, level.channels, level.config.patch_size
    patches = torch.randint(0, 256, (rows, N, C * p * p), generator=g).float()
    mask = torch.rand(rows, N, generator=g) < 0.5
    conds = [torch.randn(rows, level.config.cond_width, generator=g) for _ in range(level.num_conds)]
    first = torch.rand(rows, N, generator=g).argsort(1)[:, :revealed].sort(1).values
    return patches, mask, conds, None, first


def test_the_mar_pass_traces_as_one_graph():
    """What compile=True compiles for a MAR level: its transformer pass at the revealed patches, one graph
    without breaks (no read back from the device), equal to the eager pass (dynamo's eager backend counts)."""
    from torch._dynamo.testing import CompileCounter

    level = tiny_model("tiny_mar", perturb=0.3).levels[0]
    counter = CompileCounter()
    traced = torch.compile(level.revealed_conds, fullgraph=True, backend=counter, dynamic=False)
    with torch.no_grad():
        inputs = _mar_pass_inputs(level, 4, 3, torch.Generator().manual_seed(0))
        for a, e in zip(traced(*inputs), level.revealed_conds(*inputs), strict=True):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)
    assert counter.frame_count == 1


def test_the_mar_pass_compiles_once_more_for_any_number_of_rows(monkeypatch):
    """A MAR level's rows change from step to step: compiled, its pass is one graph for its first shapes and
    one for any, even where eager runs the MLP in pieces of rows (inside torch.compile it runs whole)."""
    from torch._dynamo.testing import CompileCounter

    from fractalgen.nn import blocks

    level = tiny_model("tiny_mar", perturb=0.3).levels[0]
    monkeypatch.setattr(blocks, "MLP_PIECE_ELEMENTS", 16 * level.blocks[0].mlp.fc1.out_features)  # 16 rows
    counter = CompileCounter()
    traced = torch.compile(level.revealed_conds, backend=counter)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for rows in (4, 6, 9, 13):
            inputs = _mar_pass_inputs(level, rows, 2, g)
            for a, e in zip(traced(*inputs), level.revealed_conds(*inputs), strict=True):
                torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)
    assert counter.frame_count == 2


def test_compiled_steps_run_as_they_are_under_a_dispatch_mode(monkeypatch):
    """Under torch's FLOP counter (a dispatch mode) `compiled` hands back the method: compiling there would
    leave torch.compile skipping the steps for good (eager, at more than eager's cost)."""
    from torch.utils.flop_counter import FlopCounterMode

    monkeypatch.setattr(fractalgen.sampling, "check_cpu_compiler", lambda: None)  # nothing is compiled here

    head = tiny_model("tiny_ar").pixel_head
    with FlopCounterMode(display=False):
        assert fractalgen.sampling.compiled(head.channels_step) == head.channels_step
    assert fractalgen.sampling.compiled(head.channels_step) != head.channels_step


@pytest.mark.skipif(sys.platform == "win32" or _cpu_compiler_missing(),
                    reason="torch.compile on a CPU needs a C++ compiler (CXX, else g++; clang++ on macOS)")
def test_compiled_pixel_loop_computes_what_the_eager_one_does():
    """compile=True: the compiled channel loop draws what the eager one draws from the same uniforms; the
    compiled AR position step and MAR pass compute what the eager ones do. Its
    kernels round differently, so a uniform within rounding of a boundary of the distribution function
    may draw the neighbouring value: all but a few of 64 pixels' draws must agree, with their
    log-probabilities; end to end, sample(compile=True) makes images."""
    model = tiny_model("tiny_ar", perturb=0.3)
    head = model.pixel_head
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(128, head.cond_proj.in_features, generator=g)
    guidance, uniforms = torch.full((64,), 2.0), torch.rand(head.channels, 64, generator=g)
    ctx = _pixel_context()
    ctx.compiled = True
    with torch.no_grad():
        eager = head.channels_step(cond, guidance, uniforms, ctx.temperature, True, ctx.filter_threshold)
        compiled = fractalgen.sampling.compiled(head.channels_step)(cond, guidance, uniforms, ctx.temperature, True,
                                                                    ctx.filter_threshold)
    same = compiled[0] == eager[0]
    assert same.float().mean() > 0.95
    torch.testing.assert_close(compiled[1][same], eager[1][same], rtol=1e-4, atol=1e-4)
    # an AR level's compiled position step: the eager step's conditions (4 rows, as sample() below: one graph)
    level = model.levels[0]
    tokens = torch.randn(4, level.config.seq_len, level.config.width, generator=g)
    with torch.no_grad():
        eager_at, eager_steps, eager_turns = _position_steps(level, 4, positions_as_tensors=False)
        at, steps, turns = _position_steps(level, 4, positions_as_tensors=True)
        step = fractalgen.sampling.compiled(level.position_step, static=True)
        for i, (t_int, t) in enumerate(zip(eager_at, at, strict=True)):
            torch.testing.assert_close(step(tokens[:, i], t, steps, turns),
                                       level.position_step(tokens[:, i], t_int, eager_steps, eager_turns),
                                       rtol=1e-4, atol=1e-4)
    images = fractalgen.sample(model, labels=[1, 4], cfg=2.0, seed=5, threads=1, compile=True)
    assert images.shape == (2, model.config.channels, model.config.img_size, model.config.img_size)
    assert images.dtype == torch.uint8
    # a MAR level's compiled transformer pass: the eager pass's conditions
    mar = tiny_model("tiny_mar", perturb=0.3)
    level = mar.levels[0]
    with torch.no_grad():
        inputs = _mar_pass_inputs(level, 6, 3, g)
        for a, e in zip(fractalgen.sampling.compiled(level.revealed_conds)(*inputs), level.revealed_conds(*inputs),
                        strict=True):
            torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("capability, bits", [("DEFAULT", 1), ("AVX2", 256), ("AVX512", 512), ("SVE256", None)])
def test_compiled_cpu_steps_name_the_vector_width_of_torchs_cpu_kernels(monkeypatch, capability, bits):
    """The width torch's kernels run at (ATEN_CPU_CAPABILITY) goes to inductor, and so into its cache key:
    kernels cached on disk under one width are not reused under another (they drew wrong values)."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(fractalgen.sampling, "check_cpu_compiler", lambda: None)  # nothing is compiled here
    seen = {}
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: seen.update(kwargs) or fn)
    head = tiny_model("tiny_ar").pixel_head
    fractalgen.sampling.compiled(head.channels_step)
    expected = {"cpp_wrapper": True} if bits is None else {"cpp_wrapper": True, "cpp.simdlen": bits}
    assert seen["options"] == expected


def test_compile_without_a_cpp_compiler_is_one_clear_error(monkeypatch):
    """compile=True on a CPU without the C++ compiler inductor would run (here CXX names a missing one): a
    user error saying so, before any step (not torch's traceback from inside the first one)."""
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    model = tiny_model("tiny_ar", seed=3)
    missing = r"needs the C\+\+ compiler torch.compile runs \('/nonexistent/g\+\+'"
    with pytest.raises(fractalgen.sampling.CompilerMissing, match=missing):
        fractalgen.sample(model, labels=[1], threads=1, compile=True)
    assert isinstance(fractalgen.sampling.CompilerMissing("x"), fractalgen.errors.UserError)
