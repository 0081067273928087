-- Follow-ups: the conversation an attempt ended with, and a follow-up prompt waiting to run on
-- the attempt's branch head. Delivery: what pushing the branch and opening its pull request did.
ALTER TABLE attempts ADD COLUMN conversation TEXT;
ALTER TABLE attempts ADD COLUMN pending_followup TEXT;
ALTER TABLE attempts ADD COLUMN delivery TEXT;
