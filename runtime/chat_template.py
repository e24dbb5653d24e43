"""Chat templates: the GGUF's `tokenizer.chat_template` rendered in a jinja2 sandbox, or,
when the file carries none, a built-in template chosen by architecture."""

from datetime import datetime
from pathlib import Path

from edgellm.errors import EdgeLLMError

TEMPLATES = Path(__file__).parent / "templates"
# architecture -> built-in template, for GGUFs without tokenizer.chat_template
BUILTIN = {"gemma3": "gemma", "gemma2": "gemma", "gemma": "gemma", "qwen2": "chatml", "llama": "llama2"}


def _raise(message):
    raise EdgeLLMError(f"chat template: {message}")


class ChatTemplate:
    def __init__(self, source: str, bos_token: str = "", eos_token: str = "", name: str = "gguf"):
        self.name = name
        self.bos_token, self.eos_token = bos_token, eos_token
        # Imported here, when a chat first needs a template: jinja2 costs 5 MiB of RSS (its
        # bytecode cache loads OpenSSL), which a plain completion (`edgellm run`) need not pay.
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            self.template = env.from_string(source)
        except jinja2.TemplateError as e:
            raise EdgeLLMError(f"the chat template ({name}) does not parse: {e}") from None

    @classmethod
    def for_model(cls, metadata: dict, arch: str, bos_token: str, eos_token: str) -> "ChatTemplate":
        source = metadata.get("tokenizer.chat_template")
        if isinstance(source, str) and source.strip():
            return cls(source, bos_token, eos_token)
        name = BUILTIN.get(arch, "chatml")
        return cls((TEMPLATES / f"{name}.jinja").read_text(), bos_token, eos_token, name)

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        check_messages(messages)
        try:
            return self.template.render(
                messages=messages, add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token, eos_token=self.eos_token,
            )
        except EdgeLLMError:
            raise
        except Exception as e:  # a template can fail in any way jinja2 can
            raise EdgeLLMError(f"the chat template ({self.name}) cannot render these messages: {e}") from None


def check_messages(messages) -> None:
    if not isinstance(messages, list) or not messages:
        raise EdgeLLMError("messages must be a non-empty list of {role, content} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise EdgeLLMError(f"message {i} must be an object with string 'role' and 'content'")
        if m["role"] not in ("system", "user", "assistant", "tool"):
            raise EdgeLLMError(f"message {i} has unknown role '{m['role']}'")
