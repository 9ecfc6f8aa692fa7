"""The ten SUPERB tasks as s3prl 0.4.18 runs them: one ``TaskSpec`` per task.

Facts come from s3prl's source at commit ``S3PRL_COMMIT`` (the commit that
sets ``version.txt`` to 0.4.18; its 165 ``downstream/*.py`` files are
byte-identical to the PyPI 0.4.18 sdist): each downstream's ``config.yaml``,
``expert.py`` / ``dataset.py`` imports, and ``downstream/docs/superb.md`` for
data and protocols. Paths in ``s3prl_files`` / ``tool_files`` are relative to
s3prl's package directory (``<clone>/s3prl``), the directory s3prl's own
configs are written against (``./downstream/...``). No torch import here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..shipped import shipped_dir

S3PRL_COMMIT = "ec8064b5889f81ca460fbe2c094ce576a6f120b7"  # s3prl/s3prl, message "0.4.18"
S3PRL_REPO = "https://github.com/s3prl/s3prl"
# Learning rates a compressed (NAS-pruned) HuBERT used per task, published by its
# authors; their batch sizes equal s3prl's defaults (batch x accumulation).
LIGHTHUBERT_LRS = "https://github.com/mechanicalsea/lighthubert/issues/2"
# s3prl's SUPERB runfile: per-task lr search grids (branch add-benchmark-runfile,
# commit 69cf5b036a49297ca235e48796ca83d845bc5b02, s3prl/downstream/<task>/*.sh).
S3PRL_LR_GRIDS = "s3prl@69cf5b03 s3prl/downstream/superb.sh"


@dataclass(frozen=True)
class Package:
    """A Python package a task imports; ``below_major`` caps its major version."""

    pip: str
    module: str
    why: str
    below_major: int | None = None


@dataclass(frozen=True)
class DataPath:
    """A user-supplied data location in a config and what must exist inside it."""

    key: str  # dotted path in the config, e.g. "downstream_expert.datarc.file_path"
    env: str  # the environment variable our YAML reads it from: ${ENV}
    markers: tuple[str, ...] = ()  # entries that must exist under the directory
    is_file: bool = False


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool
    reported: str  # where s3prl 0.4.18 writes it


@dataclass(frozen=True)
class TaskSpec:
    key: str
    title: str
    downstream: str  # s3prl's -d
    config: str  # file name under downstream_configs/
    metrics: tuple[Metric, ...]
    data: str
    data_source: str
    data_paths: tuple[DataPath, ...]
    s3prl_files: tuple[str, ...]  # needed to train and test; absent from the PyPI sdist
    tool_files: tuple[str, ...]  # needed to prepare data or to score the SUPERB metric
    writable_dirs: tuple[str, ...]  # s3prl writes caches here (inside its package)
    packages: tuple[Package, ...]
    needs_libsox: bool  # imports torchaudio.sox_effects (dlopens libsox.so)
    lr: float | None  # the lr in our YAML; None: no training
    lr_search: tuple[float, ...]  # s3prl's SUPERB search grid (S3PRL_LR_GRIDS)
    test_split: str  # -t for -m evaluate
    gpu_time: str
    protocol: str


# Packages the runner itself needs (s3prl/downstream/runner.py, run_downstream.py).
COMMON_PACKAGES = (
    Package("tensorboardX", "tensorboardX", "s3prl/downstream/runner.py"),
    Package("huggingface_hub<1.0", "huggingface_hub", "runner.py imports HfFolder, Repository", below_major=1),
    Package("transformers<5", "transformers", "needs huggingface_hub>=1 from 5.0 on", below_major=5),
)
EDITDISTANCE = Package("editdistance", "editdistance", "ctc/metric.py, asr/expert.py")
JOBLIB = Package("joblib", "joblib", "ctc/corpus/*.py, sv_voxceleb1/dataset.py")
PANDAS = Package("pandas", "pandas", "specaug.py, fluent_commands, asr, diarization")
LIBROSA = Package("librosa", "librosa", "voxceleb1/dataset.py, sv_voxceleb1/dataset.py")
SCIPY = Package("scipy", "scipy", "quesst14_dtw/expert.py, sv_voxceleb1/utils.py")

LIBRI_SPLITS = ("train-clean-100", "dev-clean", "test-clean")
LIBRISPEECH = "LibriSpeech train-clean-100, dev-clean, test-clean"
OPENSLR_12 = "https://www.openslr.org/12"
VOXCELEB1 = "https://www.robots.ox.ac.uk/~vgg/data/voxceleb/vox1.html (dev and test wav)"
LOG_TEST = "EXPDIR/log.log: 'test at step N: X'"
LR_CLS = (1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
SD_MARKERS = ("wav.scp", "segments", "utt2spk", "reco2dur")


def _accuracy(task_log: str = LOG_TEST) -> tuple[Metric, ...]:
    return (Metric("acc", True, task_log),)


_TASKS = (
    TaskSpec(
        key="PR", title="phoneme recognition", downstream="ctc", config="pr.yaml",
        metrics=(Metric("per", False, "stdout: 'test per: X'"),),
        data=LIBRISPEECH, data_source=OPENSLR_12,
        data_paths=(DataPath("downstream_expert.corpus.path", "LIBRISPEECH_ROOT", LIBRI_SPLITS),),
        # The lexicons are those pr.yaml names (in s3prl's repository; large files some copies of the tree
        # lack); a run whose -o names other lexicons (small data, docs/tasks/pr.md) does not need them
        # (preflight.replaced_files).
        s3prl_files=(
            "downstream/ctc/corpus/libriphone.py",
            "downstream/ctc/lexicon/librispeech-lexicon-200k-g2p.txt",
            "downstream/ctc/lexicon/librispeech-lexicon-allothers-g2p.txt",
            "downstream/ctc/vocab/phoneme.txt",
        ),
        tool_files=(), writable_dirs=(), packages=(EDITDISTANCE, JOBLIB), needs_libsox=False,
        lr=5e-4, lr_search=(1e-1, 1e-2, 1e-3, 1e-4, 1e-5), test_split="test",
        gpu_time="not measured (100k steps)", protocol="train; -m evaluate -t test on dev-best.ckpt",
    ),
    TaskSpec(
        key="KS", title="keyword spotting", downstream="speech_commands", config="ks.yaml",
        metrics=_accuracy(), data="Speech Commands v0.01 and its test set",
        data_source="http://download.tensorflow.org/data/speech_commands_v0.01.tar.gz and "
        "http://download.tensorflow.org/data/speech_commands_test_set_v0.01.tar.gz",
        data_paths=(
            DataPath("downstream_expert.datarc.speech_commands_root", "SPEECH_COMMANDS_ROOT", ("_background_noise_", "yes")),
            DataPath("downstream_expert.datarc.speech_commands_test_root", "SPEECH_COMMANDS_TEST_ROOT", ("yes",)),
        ),
        s3prl_files=(), tool_files=(), writable_dirs=(),
        packages=(Package("catalyst", "catalyst", "speech_commands/expert.py"),), needs_libsox=True,
        lr=1e-4, lr_search=LR_CLS, test_split="test",
        gpu_time="not measured (200k steps)", protocol="train; -m evaluate -t test on dev-best.ckpt",
    ),
    TaskSpec(
        key="IC", title="intent classification", downstream="fluent_commands", config="ic.yaml",
        metrics=_accuracy(), data="Fluent Speech Commands",
        data_source="https://fluent.ai/fluent-speech-commands-a-dataset-for-spoken-language-understanding-research/"
        " (backup in s3prl superb.md: huggingface.co/datasets/leo19941227/fluent_speech_commands)",
        data_paths=(
            DataPath(
                "downstream_expert.datarc.file_path", "FLUENT_COMMANDS_ROOT",
                ("data/train_data.csv", "data/valid_data.csv", "data/test_data.csv", "wavs"),
            ),
        ),
        s3prl_files=(), tool_files=(), writable_dirs=(), packages=(PANDAS,), needs_libsox=False,
        lr=1e-4, lr_search=LR_CLS, test_split="test",
        gpu_time="not measured (200k steps)", protocol="train; -m evaluate -t test on dev-best.ckpt",
    ),
    TaskSpec(
        key="SID", title="speaker identification", downstream="voxceleb1", config="sid.yaml",
        metrics=_accuracy(), data="VoxCeleb1", data_source=VOXCELEB1,
        data_paths=(DataPath("downstream_expert.datarc.file_path", "VOXCELEB1_ROOT", ("dev/wav", "test/wav")),),
        s3prl_files=("downstream/voxceleb1/veri_test_class.txt",), tool_files=(),
        writable_dirs=(),  # its .cache lives in the experiment directory (caches.py)
        packages=(LIBROSA,), needs_libsox=False,
        lr=5e-3, lr_search=(1e-1, 1e-2, 1e-3, 1e-4), test_split="test",
        gpu_time="not measured (200k steps)", protocol="train; -m evaluate -t test on dev-best.ckpt",
    ),
    TaskSpec(
        key="ER", title="emotion recognition", downstream="emotion", config="er.yaml",
        metrics=_accuracy(), data="IEMOCAP (Sessions 1-5; licence form)",
        data_source="https://sail.usc.edu/iemocap/",
        data_paths=(
            DataPath("downstream_expert.datarc.root", "IEMOCAP_ROOT", tuple(f"Session{i}" for i in range(1, 6))),
        ),
        s3prl_files=tuple(
            f"downstream/emotion/meta_data/Session{i}/{split}_meta_data.json"
            for i in range(1, 6) for split in ("train", "test")
        ),
        tool_files=(), writable_dirs=(), packages=(), needs_libsox=False,
        lr=1e-4, lr_search=(1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5), test_split="test",
        gpu_time="not measured (30k steps per fold, 5 folds)",
        protocol="train once per test_fold=fold1..fold5 (-o config.downstream_expert.datarc.test_fold=foldK); "
        "report the mean test accuracy",
    ),
    TaskSpec(
        key="ASR", title="speech recognition", downstream="asr", config="asr.yaml",
        metrics=(Metric("wer", False, "stdout: 'test-clean wer: X'"),),
        data=LIBRISPEECH + " and its length tables (s3prl preprocess/generate_len_for_bucket.py)",
        data_source=OPENSLR_12,
        data_paths=(
            DataPath("downstream_expert.datarc.libri_root", "LIBRISPEECH_ROOT", LIBRI_SPLITS),
            DataPath(
                "downstream_expert.datarc.bucket_file", "LIBRISPEECH_BUCKET_DIR", tuple(f"{s}.csv" for s in LIBRI_SPLITS)
            ),
        ),
        s3prl_files=("downstream/asr/char.dict",), tool_files=("preprocess/generate_len_for_bucket.py",),
        writable_dirs=(), packages=(EDITDISTANCE, PANDAS), needs_libsox=False,
        lr=1e-4, lr_search=(1e-3, 1e-4, 1e-5), test_split="test-clean",
        gpu_time="about 3 days for 200k steps (s3prl issue #280: TERA upstream, one GPU)",
        protocol="train; -m evaluate -t test-clean on dev-clean-best.ckpt",
    ),
    TaskSpec(
        key="QbE", title="query-by-example spoken term detection", downstream="quesst14_dtw", config="qbe.yaml",
        metrics=(Metric("mtwv", True, "QUESST14 scoring/score-TWV-Cnxe.sh on EXPDIR (score_twv.log); where the "
                        "data has no scorer, ours: pruned_upstream/superb/mtwv.py (score_twv_ours.log)"),),
        data="QUESST14", data_source="https://speech.fit.vutbr.cz/files/quesst14Database.tgz",
        data_paths=(
            DataPath(  # what quesst14_dtw/dataset.py reads, and the scorers' ground truth
                "downstream_expert.datarc.dataset_root", "QUESST14_ROOT",
                ("scoring/language_key_utterances.lst", "scoring/language_key_dev.lst",
                 "scoring/language_key_eval.lst", "scoring/groundtruth_quesst14_dev",
                 "scoring/groundtruth_quesst14_eval"),
            ),
        ),
        s3prl_files=(), tool_files=(), writable_dirs=(),
        packages=(
            Package("dtw-python", "dtw", "quesst14_dtw/expert.py"), Package("lxml", "lxml", "quesst14_dtw/expert.py"), SCIPY
        ),
        needs_libsox=True, lr=None, lr_search=(), test_split="test",
        gpu_time="not measured (no training: one DTW pass per layer on dev and on test)",
        protocol="no training: -m evaluate -t dev and -t test with -l LAYER for every layer; "
        "pick the layer by dev MTWV, report its test MTWV (pruned_upstream/s3prl_plugin/qbe_eval.py)",
    ),
    TaskSpec(
        key="SF", title="slot filling", downstream="ctc", config="sf.yaml",
        metrics=(
            Metric("slot_type_f1", True, "stdout: 'test slot_type_f1: X'"),
            Metric("slot_value_cer", False, "stdout: 'test slot_value_cer: X'"),
        ),
        data="Audio SNIPS, preprocessed by s3prl (wav, all.iob.snips.txt, slots.txt)",
        data_source="https://drive.google.com/file/d/1oBRZd-PaCKz5iY3eZkXs5OB_ZZ4w7bbG/view "
        "(from https://github.com/aws-samples/aws-lex-noisy-spoken-language-understanding)",
        data_paths=(
            DataPath("downstream_expert.corpus.path", "SNIPS_ROOT", ("train", "valid", "test", "all.iob.snips.txt")),
            DataPath("downstream_expert.text.slots_file", "SNIPS_ROOT", is_file=True),
        ),
        s3prl_files=("downstream/ctc/corpus/snips.py", "downstream/ctc/vocab/character.txt"),
        tool_files=(), writable_dirs=(), packages=(EDITDISTANCE, JOBLIB, PANDAS), needs_libsox=False,
        lr=1e-4, lr_search=(1e-3, 1e-4, 1e-5), test_split="test",
        gpu_time="not measured (200k steps)", protocol="train; -m evaluate -t test on dev-best.ckpt",
    ),
    TaskSpec(
        key="ASV", title="speaker verification", downstream="sv_voxceleb1", config="asv.yaml",
        metrics=(Metric("eer", False, "stdout: 'sv-voxceleb1/test-EER: X'"),),
        data="VoxCeleb1", data_source=VOXCELEB1,
        data_paths=(DataPath("downstream_expert.datarc.file_path", "VOXCELEB1_ROOT", ("dev/wav", "test/wav")),),
        s3prl_files=(
            "downstream/sv_voxceleb1/dev_meta_data/dev_speaker_ids.txt",
            "downstream/sv_voxceleb1/dev_meta_data/dev_meta_data.txt",
            "downstream/sv_voxceleb1/voxceleb1_test_v2.txt",
        ),
        tool_files=(),
        writable_dirs=(),  # its .wav_lengths lives in the experiment directory (caches.py)
        packages=(JOBLIB, LIBROSA, Package("sox", "sox", "sv_voxceleb1/dataset.py"), SCIPY,
                  Package("scikit-learn", "sklearn", "sv_voxceleb1/utils.py")),
        needs_libsox=True, lr=5e-5, lr_search=(1e-4,), test_split="test",
        gpu_time="not measured (200k steps, then one evaluation per saved checkpoint)",
        protocol="train without dev; -m evaluate each states-N.ckpt (N = 20000..200000) with our runner "
        "(s3prl's sv_voxceleb1/test_expdir.sh calls plain run_downstream.py, which lacks our upstream); "
        "report the lowest test EER (scripts/run_superb.sh run_asv)",
    ),
    TaskSpec(
        key="SD", title="speaker diarization", downstream="diarization", config="sd.yaml",
        metrics=(Metric("der", False, "dscore over s3prl downstream/diarization/score.sh's grid: "
                        "EXPDIR/scoring/result_th*_med* (pruned_upstream/s3prl_plugin/sd_eval.py)"),),
        data="Libri2Mix (2 speakers) simulated for diarization, as Kaldi-style train/dev/test directories",
        data_source="https://github.com/s3prl/LibriMix (generate_librimix_sd.sh, then scripts/prepare_diarization.py)",
        data_paths=(
            DataPath("downstream_expert.loaderrc.train_dir", "LIBRI2MIX_SD_DATA", SD_MARKERS),
            DataPath("downstream_expert.loaderrc.dev_dir", "LIBRI2MIX_SD_DATA", SD_MARKERS),
            DataPath("downstream_expert.loaderrc.test_dir", "LIBRI2MIX_SD_DATA", SD_MARKERS + ("rttm",)),
        ),
        s3prl_files=(),
        tool_files=("downstream/diarization/make_rttm.py", "downstream/diarization/score.sh",
                    "downstream/diarization/report.sh"),
        writable_dirs=(),
        packages=(
            Package("h5py", "h5py", "diarization/expert.py"), PANDAS,
            Package("soundfile", "soundfile", "diarization/dataset.py"),
        ),
        needs_libsox=False, lr=5e-4, lr_search=(1e-2, 1e-3, 1e-4, 1e-5), test_split="test",
        gpu_time="not measured (30k steps)",
        protocol="train; -m evaluate -t test on best-states-dev.ckpt; score.sh's grid (median 1 11 x threshold "
        "0.3..0.7: make_rttm.py, dscore from $DSCORE_ROOT) by python -m pruned_upstream.s3prl_plugin.sd_eval "
        "EXPDIR TEST_DIR; lowest DER",
    ),
)
TASKS: dict[str, TaskSpec] = {spec.key: spec for spec in _TASKS}


def get_task(key: str) -> TaskSpec:
    """The spec of a SUPERB task by its key (case-insensitive: "qbe" == "QbE")."""
    by_upper = {k.upper(): spec for k, spec in TASKS.items()}
    if key.upper() not in by_upper:
        raise KeyError(f"unknown SUPERB task {key!r}; known: {', '.join(TASKS)}")
    return by_upper[key.upper()]


def configs_dir() -> Path:
    """Our ``downstream_configs/``: shipped in the package, or the source checkout's (shipped.py)."""
    return shipped_dir("downstream_configs")


def config_path(key: str) -> Path:
    """Our s3prl config file for a task, e.g. ``downstream_configs/ks.yaml``."""
    return configs_dir() / get_task(key).config
