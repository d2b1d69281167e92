"""The functions llavakd's task YAMLs name (`!function llavakd_task_hooks.f`), re-exported from the
installed package; written by `llavakd lmms-tasks`."""

from llavakd.eval.paper import (  # noqa: F401
    gqa_process_results,
    mmbench_doc_to_text,
    mme_process_results,
    mmmu_doc_to_text,
    mmmu_doc_to_visual,
    mmmu_process_results,
    pope_file_doc_to_visual,
    pope_process_results,
    sqa_doc_to_text,
    sqa_process_results,
    textvqa_doc_to_text,
    vizwiz_doc_to_text,
)
from llavakd.eval.tasks import mmbench_cn_dev_static  # noqa: F401
