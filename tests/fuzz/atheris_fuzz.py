"""Coverage-guided fuzzing of the codecs with atheris (libFuzzer), beside the random harness.

The pytest harness (`tests/fuzz/test_fuzz.py`) mutates valid sequences
blindly; atheris instruments the codecs and keeps the inputs that reach new
branches. Each input is split by atheris's data provider into a valid
opening of the protocol (so that the fuzzer starts past the handshake), a
tail of its own bytes, and the points where the bytes arrive cut; the
codec must answer with its protocol error or not at all
(`tests.fuzz.harness.decode`), anything else stops the run with the input
saved as `crash-*`. Not part of the default suite; atheris is the `fuzz`
extra (Linux x86-64 wheels):

    pip install -e '.[fuzz]'
    python -m tests.fuzz.atheris_fuzz amqp -runs=100000
    python -m tests.fuzz.atheris_fuzz mqtt -max_total_time=300 corpus-dir/

Any libFuzzer flag after the protocol name is passed on.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["moorage.protocols"]):
    from tests.fuzz.corpus import CORPORA
    from tests.fuzz.harness import decode

PROTOCOLS = ("amqp", "mqtt", "stomp")


def one_input(protocol: str, data: bytes) -> None:
    """Decode an opening of `protocol`, then the fuzzer's bytes, in the chunks it chose."""
    provider = atheris.FuzzedDataProvider(data)
    corpora = CORPORA[protocol]
    sequence = corpora[provider.ConsumeIntInRange(0, len(corpora) - 1)]
    opening = sequence[: provider.ConsumeIntInRange(0, len(sequence))]
    tail = provider.ConsumeBytes(provider.remaining_bytes())
    cuts = sorted({b % (len(tail) + 1) for b in tail[:4]}) if tail else []
    pieces = [tail[a:b] for a, b in zip([0, *cuts], [*cuts, len(tail)], strict=True)]
    chunks = [c for c in [*opening, *pieces] if c]
    decode(protocol, chunks)


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in PROTOCOLS:
        sys.exit(f"usage: python -m tests.fuzz.atheris_fuzz {{{','.join(PROTOCOLS)}}} [flags]")
    protocol = argv[1]
    atheris.Setup([argv[0], *argv[2:]], lambda data: one_input(protocol, data))
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
