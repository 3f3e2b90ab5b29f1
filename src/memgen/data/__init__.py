"""Stage `data`: each task's training, dev and test sets, written as JSONL."""
