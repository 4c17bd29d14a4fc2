"""Text as users have it survives every step: data split → train → eval, byte for byte."""

import json

from typer.testing import CliRunner

from tunelab.cli.main import app

ROWS = [
    ("我的银行卡被扣了两次钱", "billing"),
    ("Списали деньги дважды 💳", "billing"),
    ("Ça ne marche pas, café\u2028ligne suivante", "login"),
    ("mot de passe oublié 🔑", "login"),
    ("パスワードを忘れました", "login"),
    ("Wo ist mein Paket? Größe: L\u2029", "shipping"),
    ("paquete perdido \u0085 ñandú", "shipping"),
    ("배송이 늦어요 📦", "shipping"),
]


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


def test_cjk_emoji_accents_and_separators_round_trip(tmp_path, tiny_model_dir):
    source = tmp_path / "all.jsonl"
    source.write_text(
        "".join(
            json.dumps({"input": text, "output": label}, ensure_ascii=False) + "\n"
            for text, label in ROWS * 3
        ),
        encoding="utf-8",
    )
    split = run("data", "split", source, "--out", tmp_path / "split", "--test-size", 6)
    assert split.exit_code == 0, split.output
    train, test = tmp_path / "split" / "train.jsonl", tmp_path / "split" / "test.jsonl"
    written = read_jsonl(train) + read_jsonl(test)
    assert sorted((r["input"], r["output"]) for r in written) == sorted(ROWS * 3)
    assert "\u2028" in train.read_text(encoding="utf-8") + test.read_text(encoding="utf-8")

    trained = run("train", "--data", train, "--test", test, "--model", tiny_model_dir,
                  "--method", "lora", "--epochs", 1, "--batch-size", 4,
                  "--out", tmp_path / "run")  # fmt: skip
    assert trained.exit_code == 0, trained.output
    evaluated = run("eval", "--data", train, "--test", test, "--adapter", tmp_path / "run",
                    "--out", tmp_path / "eval", "--show", 0)  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    for folder in ("run", "eval"):
        rows = read_jsonl(tmp_path / folder / "predictions.jsonl")
        assert [r["input"] for r in rows] == [r["input"] for r in read_jsonl(test)]
        assert [r["reference"] for r in rows] == [r["output"] for r in read_jsonl(test)]
