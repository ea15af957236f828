"""A stand-in for FUSION's `LazySupervisedDataset` (fusion/train/train.py of
github.com/starriver030515/FUSION), for testing docs/fusion.patch against.

The class below is FUSION's source, verbatim from `class LazySupervisedDataset` to the end of
`__getitem__`: the loop that reads the stage YAML, loads each file, applies `sampling_strategy`, and
the `lengths` / `modality_lengths` properties. Only what it uses from elsewhere is stubbed (no torch, no
transformers, no images), so the patch applies to this file exactly as to FUSION's. Kept verbatim,
so not linted.
"""

# ruff: noqa
# mypy: ignore-errors
from __future__ import annotations

import json
import math
import os
import random

import yaml

Dataset = object  # torch.utils.data.Dataset: nothing of it is used here
local_rank = 0


def rank0_print(*args):
    if local_rank == 0:
        print(*args)


class LazySupervisedDataset(Dataset):
    """Dataset for supervised fine-tuning."""
    def read_image(self, image_path, image_folder):
        if os.path.isabs(image_path):
            image = Image.open(image_path).convert("RGB")
        else:
            image = Image.open(os.path.join(image_folder, image_path)).convert('RGB')
        return image

    def __init__(self, data_path: str,
                 tokenizer: transformers.PreTrainedTokenizer,
                 data_args: DataArguments):
        super(LazySupervisedDataset, self).__init__()
        list_data_dict = []
        if data_path.endswith(".yaml"):
            with open(data_path, "r") as file:
                yaml_data = yaml.safe_load(file)
                datasets = yaml_data.get("datasets")
                for dataset in datasets:
                    json_path = dataset.get("json_path")
                    sampling_strategy = dataset.get("sampling_strategy", "all")
                    sampling_number = None

                    rank0_print(f"Loading {json_path} with {sampling_strategy} sampling strategy")

                    if json_path.endswith(".jsonl"):
                        cur_data_dict = []
                        with open(json_path, "r") as json_file:
                            for line in json_file:
                                cur_data_dict.append(json.loads(line.strip()))
                    elif json_path.endswith(".json"):
                        with open(json_path, "r") as json_file:
                            cur_data_dict = json.load(json_file)
                    else:
                        raise ValueError(f"Unsupported file type: {json_path}")

                    if ":" in sampling_strategy:
                        sampling_strategy, sampling_number = sampling_strategy.split(":")
                        if "%" in sampling_number:
                            sampling_number = math.ceil(int(sampling_number.split("%")[0]) * len(cur_data_dict) / 100)
                        else:
                            sampling_number = int(sampling_number)

                    if sampling_strategy == "first" and sampling_number is not None:
                        cur_data_dict = cur_data_dict[:sampling_number]
                    elif sampling_strategy == "end" and sampling_number is not None:
                        cur_data_dict = cur_data_dict[-sampling_number:]
                    elif sampling_strategy == "random" and sampling_number is not None:
                        random.shuffle(cur_data_dict)
                        cur_data_dict = cur_data_dict[:sampling_number]

                    rank0_print(f"Loaded {len(cur_data_dict)} samples from {json_path}")
                    list_data_dict.extend(cur_data_dict)
        elif data_path.endswith(".json"):
            with open(data_path, "r") as json_file:
                list_data_dict = json.load(json_file)
        else:
            raise ValueError(f"Unsupported file type: {data_path}")

        rank0_print("Formatting inputs...Skip in lazy mode")
        self.tokenizer = tokenizer
        self.list_data_dict = list_data_dict
        self.data_args = data_args

    def __len__(self):
        return len(self.list_data_dict)

    @property
    def lengths(self):
        length_list = []
        for sample in self.list_data_dict:
            img_tokens = 128 if 'image' in sample else 0
            length_list.append(sum(len(conv['value'].split()) for conv in sample['conversations']) + img_tokens)
        return length_list

    @property
    def modality_lengths(self):
        length_list = []
        for sample in self.list_data_dict:
            cur_len = sum(len(conv['value'].split()) for conv in sample['conversations'])
            cur_len = cur_len if 'image' in sample else -cur_len
            length_list.append(cur_len)
        return length_list

    def __getitem__(self, i) -> Dict[str, torch.Tensor]:
        attempt, max_attempt = 0, 50
        while attempt < max_attempt:
            try:
                data_dict = self._sample_item(i)
                break
            except:
                attempt += 1
                print(f"Error loading data {i}, attempt {attempt}")
                i = random.randint(0, len(self.list_data_dict)-1)

        return data_dict

    def _sample_item(self, i):
        # FUSION tokenises the record and loads its image here; the stand-in returns the record.
        return self.list_data_dict[i]
