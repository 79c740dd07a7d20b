"""HL7 v2: header peek, lazy reader, batch files, ACKs and the ADT/DFT mappings."""
