"""An optional local answer extractor: `eval.py --extractor llm --extractor-model DIR`.

lmms-eval's MathVista, MathVerse and MMBench scoring asks the OpenAI API to read the answer out of
a free-form response. Here a local instruction model does it instead: it is loaded and run through
the LLM-judge reward's code (`mixedr1.rewards.judges.load_llm_judge`: local files only, eval mode,
greedy, batched, left-padded), shown the benchmark's own extraction prompt, and its reply is parsed.
A reply that does not parse falls back to the rule-based extraction (`scoring.py`), and the results
file records which path scored each answer: `"rule"`, `"llm"` or `"rule_fallback"`.

Which responses the model sees follows lmms-eval:
- **MathVista**: every response except those already one choice's exact text or a plain number of
  the item's answer type (lmms-eval's quick checks). The prompt is MathVista's few-shot extraction
  prompt (`MATHVISTA_DEMOS`) with the item's `query`; the reply is normalised as the rule-based
  extraction is (`scoring.mathvista_normalize`).
- **MathVerse**: every non-empty response, with MathVerse's few-shot extraction prompt; the reply is
  then compared by the rule-based MathVerse rules (the GPT judge that follows in lmms-eval is not run).
- **MMBench**: only responses the rule-based letter extraction cannot read (lmms-eval asks GPT only
  when its own `can_infer` fails), with MMBench's option-matching prompt; the reply is a letter, and
  "E" (or any letter past the options) means none of them, which counts wrong as in lmms-eval.
Every other benchmark is scored by rules alone.

Departures: the model reads the response's answer region (`scoring.answer_region`: with the thinking
prompt, the `<answer>` content) rather than the whole text, and at most its last `MAX_RESPONSE_CHARS`
characters; the test query is laid out like the prompt's own examples ("Model response: …"); when the
model's context cannot hold the prompt, the few-shot examples are dropped, last first, then the
response is cut from the front. The extraction is as good as the local model: a 0.5B model is no
GPT-4, so report which extractor was used next to the number.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Optional, Sequence

from mixedr1.evaluation.scoring import (
    answer_region,
    extract_choice_letter,
    letters_for,
    mathvista_normalize,
    option_text_choice,
    plain_float,
)
from mixedr1.rewards.matching import parse_choice

EXTRACTABLE = ("mathvista", "mathverse", "mmbench")  # the benchmarks whose reference extracts with GPT
MAX_RESPONSE_CHARS = 4000  # the tail of a response the model reads (the answer is at the end)
EXTRACTOR_MAX_NEW_TOKENS = 64  # enough for "Extracted answer: [2007, 2008]" and MathVerse's longer answers

# ----------------------------------------------------------------------------------------------
# The prompts: (instruction, few-shot examples, the test query). Texts follow the reference's.

MATHVISTA_INSTRUCTION = (
    "Please read the following example. Then extract the answer from the model response and type it at the end of the prompt."
)
MATHVISTA_DEMOS = (
    "Hint: Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, at the end.\n"
    "Question: Which number is missing?\n\nModel response: The number missing in the sequence is 14.\n\nExtracted answer: 14",
    "Hint: Please answer the question requiring a floating-point number with one decimal place and provide the final value, "
    "e.g., 1.2, 1.3, 1.4, at the end.\nQuestion: What is the fraction of females facing the camera?\n\n"
    "Model response: The fraction of females facing the camera is 0.6, which means that six out of ten females in the group "
    "are facing the camera.\n\nExtracted answer: 0.6",
    "Hint: Please answer the question requiring a floating-point number with two decimal places and provide the final value, "
    "e.g., 1.23, 1.34, 1.45, at the end.\nQuestion: How much money does Luca need to buy a sour apple candy and a "
    "butterscotch candy? (Unit: $)\n\nModel response: Luca needs $1.45 to buy a sour apple candy and a butterscotch candy.\n\n"
    "Extracted answer: 1.45",
    "Hint: Please answer the question requiring a Python list as an answer and provide the final list, e.g., [1, 2, 3], "
    "[1.2, 1.3, 1.4], at the end.\nQuestion: Between which two years does the line  graph saw its maximum peak?\n\n"
    "Model response: The line graph saw its maximum peak between 2007 and 2008.\n\nExtracted answer: [2007, 2008]",
    "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.\n"
    "Question: What fraction of the shape is blue?\nChoices:\n(A) 3/11\n(B) 8/11\n(C) 6/11\n(D) 3/5\n\n"
    "Model response: The correct answer is (B) 8/11.\n\nExtracted answer: B",
)

MATHVERSE_INSTRUCTION = (
    "I am providing you a response from a model to a math problem, termed 'Model Response'. You should extract the answer "
    "from the response as 'Extracted Answer'. Directly output the extracted answer with no explanation."
)
MATHVERSE_DEMOS = (
    "1.\nModel response: 'Rounded to two decimal places, the perimeter of the sector is approximately:\n\n(-2, 1)'\n"
    "Extracted Answer: (-2, 1)",
    "2.\nModel response: 'at those points.\n\nTherefore, the correct option that represents the meaning of the intersection "
    "points of the graphs is:\n\nD. They give the solutions to the equation $f(t)=g(t)$.\",'\nExtracted Answer: D",
    "3.\nModel response: ' at 1 (there's a closed circle at y = 1), the range in interval notation is \\((-4, 1]\\).\n\n"
    "Final values:\nDomain: \\((-3, 3]\\)\nRange: \\((-4, 1]\\)'\nExtracted Answer: Domain: \\((-3, 3]\\)\nRange: \\((-4, 1]\\)",
    "4.\nModel response: 'As it stands, I cannot provide the correct option letter because there isn't enough information "
    "to solve for 'y'.'\nExtracted Answer: null",
    "5.\nModel response: 'Given that AB = 17.6 meters, we can now substitute into the equation:\n\nd = 17.6 / cos(38\u00b0)\n\n"
    "Therefore, to one decimal place, the distance d between Ned and Bart is approximately 22.3 meters.'\nExtracted answer: 22.3",
    "6.\nModel response:  have all the coefficients for the quadratic function:\n\\( f(x) = ax^2 + bx + c \\)\n"
    "\\( f(x) = -1x^2 - 2x + 1 \\)\n\nTherefore, the equation for the graphed function \\( f \\) is:\n"
    "\\( f(x) = -x^2 - 2x + 1 \\)\"'\nExtracted answer: f(x) = -x^2 - 2x + 1",
)

MMBENCH_INSTRUCTION = (
    "You are an AI assistant who will help me to match an answer with several options of a single-choice question. "
    "You are provided with a question, several options, and an answer, and you need to find which option is most similar "
    "to the answer. If the meaning of all options are significantly different from the answer, output E. "
    "Your should output a single uppercase character in A, B, C, D (if they are valid options), and E. "
)
MMBENCH_DEMOS = (
    "Example 1: \nQuestion: What is the main object in image?\nOptions: A. teddy bear B. rabbit C. cat D. dog\n"
    "Answer: a cute teddy bear\nYour output: A",
    "Example 2: \nQuestion: What is the main object in image?\nOptions: A. teddy bear B. rabbit C. cat D. dog\n"
    "Answer: Spider\nYour output: E",
)


@dataclass(frozen=True)
class ExtractionPrompt:
    instruction: str
    demos: tuple[str, ...]  # few-shot examples, dropped last first when the model's context is short
    before: str  # the test query up to the response
    after: str  # and after it

    def text(self, n_demos: int, response: str) -> str:
        return "\n\n".join([self.instruction, *self.demos[:n_demos], self.before + response + self.after])


def _mathvista_query(item) -> str:
    query = item.meta.get("query")
    if not query:  # a file without MathVista's `query` column: its question and choices
        query = f"Question: {item.question}"
        if item.options:
            query += "\nChoices:\n" + "\n".join(f"({letter}) {option}" for letter, option in zip(string.ascii_uppercase, item.options))
    return query


def extraction_prompt(name: str, item) -> ExtractionPrompt:
    if name == "mathvista":
        return ExtractionPrompt(MATHVISTA_INSTRUCTION, MATHVISTA_DEMOS, _mathvista_query(item) + "\n\nModel response: ",
                                "\n\nExtracted answer:")
    if name == "mathverse":
        return ExtractionPrompt(MATHVERSE_INSTRUCTION, MATHVERSE_DEMOS, "7.\nModel response: '", "'\nExtracted Answer:")
    if name == "mmbench":
        options = " ".join(f"{letter}. {option}" for letter, option in zip(string.ascii_uppercase, item.options))
        return ExtractionPrompt(MMBENCH_INSTRUCTION, MMBENCH_DEMOS,
                                f"Example 3: \nQuestion: {item.question}?\nOptions: {options}\nAnswer: ", "\nYour output:")
    raise ValueError(f"no extraction prompt for {name!r}; extractable: {EXTRACTABLE}")


# ----------------------------------------------------------------------------------------------
# Which responses the model reads, and what its reply means


def needs_model(name: str, item, response: str) -> bool:
    """Whether the reference would ask its GPT extractor about this response (see the module docstring)."""
    region = answer_region(response)
    if not region.strip():
        return False
    if name == "mathvista":
        answer_type = item.meta.get("answer_type")
        if item.multiple_choice and region.strip() in item.options:
            return False
        if answer_type == "integer" and re.fullmatch(r"[-+]?\d+", region.strip()):
            return False
        if answer_type == "float" and plain_float(region) is not None:
            return False
        return True
    if name == "mmbench":
        return extract_choice_letter(region, letters_for(len(item.options)), item.options) is None
    return name == "mathverse"


_REPLY_LABEL = re.compile(r"\A\s*(?:extracted\s+answer|your\s+output|answer)\s*[:：]\s*", re.IGNORECASE)


def clean_reply(reply: str) -> str:
    """The reply's first non-empty line, without a leading "Extracted answer:" and quotes."""
    if not isinstance(reply, str):
        return ""
    text = _REPLY_LABEL.sub("", reply.strip())
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    text = lines[0] if lines else ""
    return text.strip().strip("'\"`").strip()


_STANDALONE = re.compile(r"(?<![A-Za-z])([A-E])(?![A-Za-z])")


def parse_reply(name: str, item, reply: str) -> Optional[str]:
    """The extraction a reply gives, or None when it does not parse (then the rule-based path scores).

    MathVista: the cleaned reply if it normalises to something comparable; MathVerse: the cleaned
    reply if non-empty ("null" is a parsed "no answer"); MMBench: the letter, read as lmms-eval's
    `can_infer` reads GPT's reply (a letter spelling, one standalone letter A-E, or one option's text).
    """
    text = clean_reply(reply)
    if not text:
        return None
    if name == "mathvista":
        meta = item.meta
        normalised = mathvista_normalize(text, meta["question_type"], meta["answer_type"], item.options, meta.get("precision"))
        return text if normalised is not None else None
    if name == "mathverse":
        return text
    if name == "mmbench":
        letter = parse_choice(text, None)
        if letter is not None and letter in "ABCDE":
            return letter
        letters = set(_STANDALONE.findall(text))
        if len(letters) == 1:
            return letters.pop()
        return option_text_choice(text, item.options)
    raise ValueError(f"no reply parser for {name!r}; extractable: {EXTRACTABLE}")


# ----------------------------------------------------------------------------------------------
# The model


@dataclass
class Extraction:
    """How one response was read: `extractor` is "rule", "llm" or "rule_fallback" (the model's reply
    did not parse); `extraction` is what the scorer gets when "llm"."""

    extractor: str
    reply: Optional[str] = None
    extraction: Optional[str] = None


class LocalExtractor:
    """A local instruction model behind the LLM-judge reward's `LLMJudge` (loading, batched greedy generation)."""

    def __init__(self, judge):
        self.judge = judge
        self.budget = judge.context_tokens - judge.generation_config.max_new_tokens  # prompt tokens that fit

    def fit(self, prompt: ExtractionPrompt, response: str) -> str:
        """The rendered prompt with as many examples as fit, then as much of the response's tail as fits."""
        response = response[-MAX_RESPONSE_CHARS:]
        for n_demos in range(len(prompt.demos), -1, -1):
            rendered = self.judge.render_chat(prompt.text(n_demos, response))
            if self.judge.prompt_tokens(rendered) <= self.budget:
                return rendered
        while len(response) > 1:
            response = response[len(response) // 2 :]
            rendered = self.judge.render_chat(prompt.text(0, response))
            if self.judge.prompt_tokens(rendered) <= self.budget:
                return rendered
        raise ValueError(
            f"--extractor-model reads at most {self.judge.context_tokens} tokens: too few for the extraction "
            f"instruction and {self.judge.generation_config.max_new_tokens} new tokens"
        )

    def extract(self, name: str, items: Sequence, responses: Sequence[str]) -> list[Extraction]:
        """One `Extraction` per item: rule-based where the reference would not ask its model, else the
        model's reply, parsed (batched through `LLMJudge.generate`)."""
        results = [Extraction("rule") for _ in items]
        if name not in EXTRACTABLE:
            return results
        asked = [i for i, (item, response) in enumerate(zip(items, responses)) if needs_model(name, item, response)]
        prompts = [self.fit(extraction_prompt(name, items[i]), answer_region(responses[i])) for i in asked]
        replies = self.judge.generate(prompts) if prompts else []
        for i, reply in zip(asked, replies):
            parsed = parse_reply(name, items[i], reply)
            results[i] = Extraction("llm" if parsed is not None else "rule_fallback", reply, parsed)
        return results


def load_extractor(model_dir, device, batch_size: int = 16, max_new_tokens: int = EXTRACTOR_MAX_NEW_TOKENS) -> LocalExtractor:
    """The extractor model from a local directory (`load_llm_judge`: bf16 on CUDA, fp32 on CPU)."""
    from mixedr1.rewards.judges import load_llm_judge

    return LocalExtractor(load_llm_judge(model_dir, device, batch_size=batch_size, max_new_tokens=max_new_tokens))
