"""A scripted `llm.LLM` for AgentSession tests: livekit-agents ships no public fake LLM.

It answers each chat with the next scripted reply, streamed word by word as an LLM streams
tokens, and reports token usage like a provider does. `token_delay_s` paces the tokens, so a
test can act while the "LLM" is still writing (an interruption mid-answer).
"""

from __future__ import annotations

import asyncio
from typing import Any

from livekit.agents import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions, llm


class ScriptedLLM(llm.LLM):
    """Replies with the next scripted answer, streamed word by word, and reports token usage."""

    def __init__(self, replies: list[str], *, token_delay_s: float = 0.0) -> None:
        super().__init__()
        self.replies = list(replies)
        self.prompts: list[str] = []
        self.token_delay_s = token_delay_s

    @property
    def model(self) -> str:
        return "scripted"

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        **_: Any,
    ) -> llm.LLMStream:
        last_user = next((m.text_content for m in reversed(chat_ctx.messages()) if m.role == "user"), "")
        self.prompts.append(last_user or "")
        reply = self.replies.pop(0)
        return _ScriptedStream(self, reply, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options)


class _ScriptedStream(llm.LLMStream):
    def __init__(self, owner: ScriptedLLM, reply: str, **kwargs: Any) -> None:
        super().__init__(owner, **kwargs)
        self._reply = reply
        self._delay = owner.token_delay_s

    async def _run(self) -> None:
        words = self._reply.split(" ")
        for i, word in enumerate(words):
            if self._delay and i:
                await asyncio.sleep(self._delay)
            text = word if i == 0 else " " + word
            self._event_ch.send_nowait(
                llm.ChatChunk(id="scripted", delta=llm.ChoiceDelta(role="assistant", content=text))
            )
        self._event_ch.send_nowait(
            llm.ChatChunk(
                id="scripted",
                usage=llm.CompletionUsage(completion_tokens=len(words), prompt_tokens=7, total_tokens=7 + len(words)),
            )
        )
