"""Feature networks trained here that stand in for the paper's pretrained extractors."""
