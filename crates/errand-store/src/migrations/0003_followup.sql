-- Follow-ups: the conversation an attempt ended with, and a follow-up prompt waiting to run on
-- the attempt's branch head.
ALTER TABLE attempts ADD COLUMN conversation TEXT;
ALTER TABLE attempts ADD COLUMN pending_followup TEXT;
