"""A small LibriSpeech spoken by espeak-ng, in the real corpus's layout, for SUPERB PR and ASR.

The real corpus (https://www.openslr.org/12, unpacked ``LibriSpeech/``)::

    LibriSpeech/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac    16 kHz mono 16-bit FLAC
    LibriSpeech/<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt     "<utt id> <UPPER TEXT>\\n" per line

Who reads it (s3prl 0.4.18, commit ec8064b5):

* PR, ``s3prl/downstream/ctc/corpus/libriphone.py``: ``rglob("*.flac")`` under
  ``<path>/<split>``; the transcript is the line of ``<speaker>-<chapter>.trans.txt``
  whose first word is the file's stem (``line[:-1]`` drops the last character,
  so every line ends with a newline); each word becomes phonemes through the
  lexicon files of ``corpus.lexicon`` (``WORD<TAB>PH PH ...``, every phoneme in
  ``downstream/ctc/vocab/phoneme.txt``: ARPAbet with stress digits on vowels).
* ASR, ``s3prl/downstream/asr/dataset.py``: the utterances listed in
  ``<bucket_file>/<split>.csv``, the table ``s3prl/preprocess/generate_len_for_bucket.py``
  writes (``,file_path,length,label``: pandas index, the path relative to the
  LibriSpeech root, the number of samples, an empty label; longest first),
  transcripts from the same ``trans.txt`` files.

Small data here: a few espeak-ng voices as speakers (speaker and chapter ids
look like LibriSpeech's, each split has its own speakers), short sentences of
a small vocabulary. The two big lexicon files s3prl's PR config names are not
in s3prl's git tree (s3prl's ``dataio/encoder/g2p.py`` downloads them from
huggingface.co/datasets/s3prl/g2p); :func:`write_lexicon` writes a lexicon of
our words instead, from espeak-ng's own pronunciation (the en-us voice, the
same program that speaks the audio) mapped from IPA to ARPAbet by
:func:`ipa_to_arpabet`. Pass it with ``-o config.downstream_expert.corpus.lexicon=['<file>']``.
ASR's LM decoding (s3prl superb.md: LibriSpeech's 4-gram.arpa.gz and fairseq's letter lexicon)
uses :func:`write_asr_lm`'s small stand-ins instead (docs/tasks/asr.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
LEXICON_VOICE = "en-us"


@dataclass(frozen=True)
class Reader:
    """One LibriSpeech speaker (one chapter) and the espeak-ng voice that reads it."""

    speaker: int
    chapter: int
    voice: str
    speed: int
    pitch: int


# Speaker and chapter ids of the real splits (disjoint speakers per split, as in LibriSpeech).
READERS: dict[str, tuple[Reader, ...]] = {
    "train-clean-100": (
        Reader(103, 1240, "en-us+m3", 160, 40), Reader(1034, 121119, "en-us+f2", 170, 60),
        Reader(1040, 133433, "en-gb+m1", 150, 45), Reader(1069, 133699, "en-gb+f4", 165, 55),
    ),
    "dev-clean": (Reader(84, 121123, "en-us+f5", 160, 50), Reader(174, 50561, "en-gb-x-rp+m7", 155, 40)),
    "test-clean": (Reader(61, 70968, "en-029+f1", 160, 55), Reader(121, 121726, "en-gb-scotland+m5", 150, 45)),
    "dev-other": (Reader(116, 288045, "en-us+m3", 185, 30),),
    "test-other": (Reader(367, 130732, "en-us+f2", 185, 70),),
}
DEFAULT_SPLITS = ("train-clean-100", "dev-clean", "test-clean")

SENTENCES = (
    "THE CAT SAT ON THE MAT", "SHE READ A BOOK IN THE GARDEN", "THE DOG RAN TO THE HOUSE",
    "WE WALKED HOME IN THE EVENING", "HE OPENED THE DOOR SLOWLY", "THE CHILDREN PLAYED BY THE RIVER",
    "MY FATHER BOUGHT A NEW HORSE", "THE SUN WAS BRIGHT AND WARM", "SHE SANG A SONG FOR HER MOTHER",
    "THE OLD MAN TOLD A STORY", "THEY WAITED FOR THE TRAIN", "THE WATER WAS COLD AND DEEP",
    "I WROTE A LETTER TO MY FRIEND", "THE KING GAVE HIM A SWORD", "THE BIRDS FLEW OVER THE HILL",
    "HER VOICE WAS SOFT AND LOW", "WE ATE BREAD AND CHEESE", "THE SHIP SAILED AT NIGHT",
    "HE COULD NOT FIND HIS HAT", "THE GIRL LAUGHED AT THE JOKE", "IT WAS A LONG AND QUIET DAY",
    "THE ROAD WENT THROUGH THE FOREST", "SHE PUT THE FLOWERS ON THE TABLE", "THE BOY CAUGHT A FISH",
)

# espeak-ng IPA (en-us, `-q --ipa`) -> ARPAbet as in CMUdict and s3prl's phoneme.txt.
# Longest symbols first; vowels get the stress digit of the mark before their syllable.
IPA_VOWELS = {
    "aɪ": "AY", "aʊ": "AW", "eɪ": "EY", "ɔɪ": "OY", "oʊ": "OW", "əʊ": "OW",
    "iː": "IY", "i": "IY", "ɪ": "IH", "ᵻ": "IH", "ɛ": "EH", "e": "EH", "æ": "AE", "a": "AE",
    "ɑː": "AA", "ɑ": "AA", "ɒ": "AA", "ɔː": "AO", "ɔ": "AO", "oː": "OW", "o": "OW",
    "ʊ": "UH", "uː": "UW", "u": "UW", "ʌ": "AH", "ə": "AH", "ɐ": "AH", "ɚ": "ER", "ɜː": "ER", "ɜ": "ER",
}
IPA_CONSONANTS = {
    "tʃ": "CH", "dʒ": "JH", "p": "P", "b": "B", "t": "T", "d": "D", "k": "K", "ɡ": "G", "g": "G",
    "f": "F", "v": "V", "θ": "TH", "ð": "DH", "s": "S", "z": "Z", "ʃ": "SH", "ʒ": "ZH", "h": "HH",
    "m": "M", "n": "N", "ŋ": "NG", "l": "L", "ɹ": "R", "r": "R", "w": "W", "j": "Y",
    "ɾ": "T", "ʔ": "T", "x": "K",  # flap (water) and glottal stop (button): CMUdict writes T
}
SYLLABIC = {"n̩": "N", "l̩": "L", "m̩": "M"}  # schwa + consonant, as CMUdict (button: B AH1 T AH0 N)
STRESS_MARKS = {"ˈ": "1", "ˌ": "2"}
IPA_SYMBOLS = tuple(sorted({**IPA_VOWELS, **IPA_CONSONANTS, **SYLLABIC}, key=len, reverse=True))  # longest first
ARPABET_VOWELS = frozenset(IPA_VOWELS.values())
ARPABET = frozenset(
    [v + d for v in ARPABET_VOWELS for d in "012"] + list(IPA_CONSONANTS.values())
)


def ipa_to_arpabet(ipa: str) -> list[str]:
    """ARPAbet phonemes (vowels with stress 0/1/2) of one word's espeak-ng IPA.

    ``oː`` before ``ɹ`` is AO (four: F AO1 R, as CMUdict); an unknown symbol
    raises ValueError naming it.
    """
    out, stress, i = [], "0", 0
    while i < len(ipa):
        char = ipa[i]
        if char in STRESS_MARKS:
            stress, i = STRESS_MARKS[char], i + 1
            continue
        symbol = next((s for s in IPA_SYMBOLS if ipa.startswith(s, i)), None)
        if symbol is None:
            raise ValueError(f"IPA symbol {char!r} (U+{ord(char):04X}) of {ipa!r} has no ARPAbet mapping")
        i += len(symbol)
        if symbol in SYLLABIC:
            out += ["AH" + stress, SYLLABIC[symbol]]
            stress = "0"
        elif symbol in IPA_VOWELS:
            vowel = "AO" if symbol.startswith("o") and ipa.startswith("ɹ", i) else IPA_VOWELS[symbol]
            out.append(vowel + stress)
            stress = "0"
        else:
            out.append(IPA_CONSONANTS[symbol])
    return out


def espeak_words_ipa(words: list[str], voice: str = LEXICON_VOICE) -> dict[str, str]:
    """espeak-ng's IPA of each word said alone (one espeak-ng call, one clause per word)."""
    import subprocess

    from pruned_upstream.data.speech import find_espeak

    text = "".join(f"{word.lower()}.\n" for word in words)
    cmd = [find_espeak(), "-q", "--ipa", "-v", voice]
    proc = subprocess.run(cmd, input=text.encode(), capture_output=True, check=False)
    lines = [line.strip() for line in proc.stdout.decode().splitlines() if line.strip()]
    if proc.returncode != 0 or len(lines) != len(words):
        raise RuntimeError(f"{' '.join(cmd)} gave {len(lines)} lines for {len(words)} words "
                           f"(exit {proc.returncode}): {proc.stderr.decode().strip()}")
    return dict(zip(words, lines))


def lexicon_entries(words: list[str], voice: str = LEXICON_VOICE) -> dict[str, list[str]]:
    """WORD -> ARPAbet phonemes, from espeak-ng's pronunciation of each word."""
    return {word: ipa_to_arpabet(ipa) for word, ipa in espeak_words_ipa(sorted(set(words)), voice).items()}


def write_lexicon(path: str | os.PathLike, words: list[str], voice: str = LEXICON_VOICE) -> Path:
    """A lexicon file in the format of s3prl's ``librispeech-lexicon-*-g2p.txt``: ``WORD\\tPH PH ...``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = lexicon_entries(words, voice)
    path.write_text("".join(f"{word}\t{' '.join(phones)}\n" for word, phones in sorted(entries.items())))
    return path


def utterances(split: str, per_reader: int, seed: int) -> list[tuple[Reader, str, str]]:
    """(reader, utterance id, text) of a split; sentences drawn without repeats per reader."""
    rng = np.random.default_rng([seed, sum(map(ord, split))])
    out = []
    for reader in READERS[split]:
        picks = rng.choice(len(SENTENCES), size=per_reader, replace=False)
        for k, pick in enumerate(picks):
            out.append((reader, f"{reader.speaker}-{reader.chapter}-{k:04d}", SENTENCES[int(pick)]))
    return out


def write_split(libri_root: Path, split: str, per_reader: int, seed: int) -> list[Path]:
    """One split's FLAC files and ``trans.txt`` files; returns the FLAC paths."""
    import soundfile as sf

    from pruned_upstream.data.speech import Voice, speak_text

    flacs, chapters = [], {}
    for reader, utt_id, text in utterances(split, per_reader, seed):
        folder = libri_root / split / str(reader.speaker) / str(reader.chapter)
        folder.mkdir(parents=True, exist_ok=True)
        wav = speak_text(text.lower(), Voice(reader.voice, speed=reader.speed, pitch=reader.pitch))
        flac = folder / f"{utt_id}.flac"
        sf.write(str(flac), np.clip(wav, -1.0, 1.0), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        flacs.append(flac)
        chapters.setdefault(folder / f"{reader.speaker}-{reader.chapter}.trans.txt", []).append(f"{utt_id} {text}\n")
    for trans, lines in chapters.items():
        trans.write_text("".join(sorted(lines)))
    return flacs


@dataclass(frozen=True)
class SmallLibriSpeech:
    """Where :func:`build_librispeech` wrote things."""

    root: Path  # the LibriSpeech directory: PR's corpus.path, ASR's libri_root
    bucket_dir: Path  # ASR's bucket_file: <split>.csv tables
    lexicon: Path  # PR's corpus.lexicon entry
    splits: tuple[str, ...]
    lm: Path | None = None  # ASR's decoder_args.kenlm_model: a word 3-gram of the training transcripts
    lm_lexicon: Path | None = None  # ASR's decoder_args.lexicon: WORD<TAB>W O R D |

    def transcripts(self, split: str) -> dict[str, str]:
        """Utterance id -> text of a split, read back from its ``trans.txt`` files."""
        lines = (line.split(" ", 1) for f in sorted((self.root / split).rglob("*.trans.txt"))
                 for line in f.read_text().splitlines())
        return {utt: text for utt, text in lines}


def build_librispeech(out: str | os.PathLike, splits: tuple[str, ...] = DEFAULT_SPLITS,
                      per_reader: int | dict[str, int] = 3, seed: int = 0) -> SmallLibriSpeech:
    """Write ``out/LibriSpeech/<split>/...``, ``out/len_for_bucket/<split>.csv``, ``out/lexicon.txt``
    and, with the training split, ASR's language model ``out/lm.arpa`` and ``out/lm_lexicon.txt``.

    ``per_reader``: utterances per speaker (a number, or one per split).
    Deterministic given ``seed``.
    """
    out = Path(out)
    root = out / "LibriSpeech"
    for split in splits:
        count = per_reader[split] if isinstance(per_reader, dict) else per_reader
        write_split(root, split, count, seed)
    bucket_dir = write_len_for_bucket(root, out, splits)
    words = [w for split in splits for f in (root / split).rglob("*.trans.txt")
             for line in f.read_text().splitlines() for w in line.split()[1:]]
    lexicon = write_lexicon(out / "lexicon.txt", words)
    lm, lm_lexicon = write_asr_lm(out, root, splits)
    return SmallLibriSpeech(root, bucket_dir, lexicon, tuple(splits), lm, lm_lexicon)


LM_SPLIT = "train-clean-100"  # the LM's text: training transcripts only (test-clean's sentences may differ)


def write_asr_lm(out: Path, root: Path, splits) -> tuple[Path | None, Path | None]:
    """``out/lm.arpa`` (a word 3-gram of the training transcripts, superb_data/arpa.py) and
    ``out/lm_lexicon.txt`` (every word of every split spelled in char.dict's letters), for s3prl's
    KenLM decoding of ASR; (None, None) without the training split."""
    from pruned_upstream.superb_data.arpa import write_arpa, write_letter_lexicon

    if LM_SPLIT not in splits:
        return None, None
    train = [line.split()[1:] for f in sorted((root / LM_SPLIT).rglob("*.trans.txt"))
             for line in f.read_text().splitlines()]
    every = [w for split in splits for f in (root / split).rglob("*.trans.txt")
             for line in f.read_text().splitlines() for w in line.split()[1:]]
    write_arpa(out / "lm.arpa", train, order=3)
    return out / "lm.arpa", write_letter_lexicon(out / "lm_lexicon.txt", every)


def write_len_for_bucket(libri_root: str | os.PathLike, output_path: str | os.PathLike, splits: tuple[str, ...],
                         audio_extension: str = ".flac", name: str = "len_for_bucket") -> Path:
    """``output_path/name/<split>.csv`` as ``s3prl/preprocess/generate_len_for_bucket.py`` writes it.

    Same file order (``Path.rglob``), same sort (numpy's ``argsort`` of the
    lengths, reversed), same columns through pandas: ``,file_path,length,label``.
    Lengths are sample counts (soundfile's ``frames``; the script reads
    ``torchaudio.info(...).num_frames``).
    """
    import pandas as pd
    import soundfile as sf

    libri_root, out_dir = str(libri_root), Path(output_path) / name
    out_dir.mkdir(parents=True, exist_ok=True)
    for split in splits:
        todo = list(Path(os.path.join(libri_root, split)).rglob("*" + audio_extension))
        lengths = [sf.info(str(f)).frames for f in todo]
        order = reversed(np.argsort(lengths))
        paths = [os.path.join(split, str(todo[i]).split(split + "/")[-1]) for i in order]
        frame = pd.DataFrame(data={"file_path": paths, "length": list(reversed(sorted(lengths))), "label": None})
        frame.to_csv(out_dir / f"{split}.csv")
    return out_dir
