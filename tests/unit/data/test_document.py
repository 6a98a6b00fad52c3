"""Document (gpt2lab/data/document.py): the unit every source yields, its text, where it came from, and a split of
its own only when the source chose one."""

import dataclasses

from gpt2lab.data.document import Document


def test_a_document_has_no_split_of_its_own_unless_its_source_chose_one():
    doc = Document("To be, or not to be", "hamlet.txt")
    assert (doc.text, doc.name, doc.split) == ("To be, or not to be", "hamlet.txt", None)
    assert Document("Enter GHOST.", "Hamlet", "val").split == "val"  # e.g. Shakespeare's held-out plays


def test_documents_compare_by_value_in_the_order_text_name_split():
    assert [f.name for f in dataclasses.fields(Document)] == ["text", "name", "split"]
    assert Document("a", "f.txt") == Document(text="a", name="f.txt", split=None)
    assert Document("a", "f.txt") != Document("a", "g.txt")
