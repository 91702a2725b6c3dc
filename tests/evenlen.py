"""A planted grader for the measuring tests (imported in-process, and copied beside the script the
2-process tests launch, where `--grader evenlen:EvenLength` finds it)."""


class EvenLength:
    """A completion is "correct" when its length is even. The tiny model never solves a problem;
    this gives nonzero counts whose equality checks the samples themselves."""

    name = "even-length"

    def extract(self, completion):
        return completion

    def equivalent(self, pred, ref):
        return len(pred) % 2 == 0

    def is_correct(self, completion, ref_answer):
        return len(completion) % 2 == 0
