from llavakd.eval.tasks import mmbench_cn_dev_static  # noqa: F401
from llavakd.eval.paper import gqa_process_results, mmbench_doc_to_text, mme_process_results, mmmu_doc_to_text, mmmu_doc_to_visual, mmmu_process_results, pope_file_doc_to_visual, pope_process_results, sqa_doc_to_text, sqa_process_results, textvqa_doc_to_text, vizwiz_doc_to_text  # noqa: F401
