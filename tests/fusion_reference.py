"""FUSION's own definitions, kept as the reference the tests and benchmarks compare against
(`LazySupervisedDataset.lengths` / `.modality_lengths`, verbatim in substance)."""

from __future__ import annotations

from typing import Any


def fusion_lengths(list_data_dict: list[Any]) -> list[int]:
    """FUSION's `lengths`: words of every turn, plus 128 when the record has the key `image`."""
    length_list = []
    for sample in list_data_dict:
        img_tokens = 128 if "image" in sample else 0
        length_list.append(sum(len(conv["value"].split()) for conv in sample["conversations"]) + img_tokens)
    return length_list


def fusion_modality_lengths(list_data_dict: list[Any]) -> list[int]:
    """FUSION's `modality_lengths`: the words, negative for records without the key `image`."""
    length_list = []
    for sample in list_data_dict:
        cur_len = sum(len(conv["value"].split()) for conv in sample["conversations"])
        cur_len = cur_len if "image" in sample else -cur_len
        length_list.append(cur_len)
    return length_list
