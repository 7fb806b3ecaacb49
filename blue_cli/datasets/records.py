"""The one record type every editing method consumes, independent of the source format."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EditRequest:
    """One counterfactual edit: make ``prompt`` about ``subject`` complete with ``target_new``.

    ``prompt`` holds ``{}`` where the subject goes. Targets carry no leading space
    (as in CounterFact); code that tokenizes a completion adds the ``" "`` itself.

    ``neighborhood_answers`` (zsRE) gives the gold answer of each neighbourhood prompt,
    in order; CounterFact leaves it empty because its neighbours are scored against
    the two targets. ``relation_id`` and ``target_new_id`` (CounterFact's Wikidata ids,
    e.g. "P101", "Q30") key the Wikipedia snippets that consistency compares with.
    """

    case_id: int
    subject: str
    prompt: str
    target_new: str
    target_true: str
    paraphrase_prompts: tuple[str, ...] = ()
    neighborhood_prompts: tuple[str, ...] = ()
    generation_prompts: tuple[str, ...] = ()
    neighborhood_answers: tuple[str, ...] = ()
    relation_id: str = ""
    target_new_id: str = ""

    @property
    def rewrite_prompt(self) -> str:
        """The prompt with the subject filled in.

        Only the first ``{}`` is replaced (not ``str.format``), so other braces in a
        prompt or subject can never raise or be mangled.
        """
        return self.prompt.replace("{}", self.subject, 1)
