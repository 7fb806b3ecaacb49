"""General-capability evaluation during sequential editing (the reference's glue_eval).

SST-2, MRPC, CoLA, RTE, MMLU and an RTE-style NLI set, asked 0-shot (by default) with
greedy generation and a keyword parse, scored with weighted F1, MCC and accuracy.
Split in three: ``tasks`` (records, prompts, parsing), ``metrics`` (pure-Python F1 and
MCC), ``generation`` + ``harness`` (batched greedy decoding, the evaluation loop).
"""

from blue_cli.evaluation.general.harness import MAX_NEW_TOKENS, N_ITEMS, TaskResult, evaluate_general, run_task
from blue_cli.evaluation.general.metrics import SCORES, UNPARSED, accuracy, matthews_corrcoef, weighted_f1
from blue_cli.evaluation.general.tasks import BUNDLED, FEW_SHOT_RESERVE, GENERAL_TASKS, TaskData, load_task

__all__ = [
    "BUNDLED",
    "FEW_SHOT_RESERVE",
    "GENERAL_TASKS",
    "MAX_NEW_TOKENS",
    "N_ITEMS",
    "SCORES",
    "UNPARSED",
    "TaskData",
    "TaskResult",
    "accuracy",
    "evaluate_general",
    "load_task",
    "matthews_corrcoef",
    "run_task",
    "weighted_f1",
]
