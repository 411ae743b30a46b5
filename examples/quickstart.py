"""Train a few-shot classifier from a handful of labelled texts and use it through `pipeline("gts-few-shot")`."""

from transformers import pipeline

from gts_hf import Example, GTSEngine, build_task

positive = ["物流很快，质量很好", "非常满意，推荐购买", "做工精细，性价比高", "服务热情，下次还来"]
negative = ["质量太差，用了两天就坏了", "客服态度恶劣", "包装破损，很失望", "和描述不符，差评"]
task = build_task(train=[Example(text, label="正面") for text in positive] + [Example(text, label="负面") for text in negative])

GTSEngine(mode="fast").train(task, output_dir="quickstart-model")
classifier = pipeline("gts-few-shot", model="quickstart-model")
print(classifier(["东西很好，很喜欢", "太差了，退货"]))
