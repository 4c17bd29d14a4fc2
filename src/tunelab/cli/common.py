"""Option parsing shared by the commands that read a dataset or load a model, and the
listening socket of the commands that serve (serve, ui)."""

import ipaddress
import socket

import typer
from pydantic import BaseModel

from tunelab.errors import TuneLabError


def choice(option: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise TuneLabError(f"{option} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def settings_option(model: type[BaseModel], name: str, *flags: str, **kwargs):
    """A CLI option whose default, and help unless given, come from a field of a settings
    class: the command line and the file forms (experiments, stored runs) cannot drift."""
    field = model.model_fields[name]
    if "help" not in kwargs and field.description:
        text = field.description[0].upper() + field.description[1:]
        kwargs["help"] = text if text.endswith((".", ")", "?")) else text + "."
    return typer.Option(field.get_default(call_default_factory=True), *flags, **kwargs)


DEVICE_HELP = "auto (a GPU when PyTorch sees one, else the CPU) | cpu | cuda | mps."
DTYPE_HELP = "auto (bfloat16 on a GPU, float16 where bf16 is unsupported; float32 on CPU)."


def device_option(default: str = "auto"):
    return typer.Option(default, help=DEVICE_HELP)


def dtype_option(default: str = "auto"):
    return typer.Option(default, help=DTYPE_HELP + " | float32 | bfloat16 | float16")


def listen(host: str, port: int) -> socket.socket:
    try:
        return socket.create_server((host, port), family=_family(host))
    except OSError as err:
        reason = err.strerror or err
        raise TuneLabError(f"--host {host} --port {port}: cannot listen ({reason})") from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
