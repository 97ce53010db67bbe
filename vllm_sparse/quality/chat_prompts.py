"""Chat prompts, in two lists that share nothing: ``EVAL_CHAT_PROMPTS`` are what the
quality report asks both models (answers through the chat template);
``SELF_CHAT_SEEDS`` are what ``prune --calibration self-chat`` asks the dense model to
answer, so a checkpoint is never evaluated on the prompts it was calibrated on."""

EVAL_CHAT_PROMPTS = (
    "What are three important things to know about the ocean?",
    "Give me a simple recipe for pancakes.",
    "Explain what a computer virus is to a ten-year-old.",
    "Write a short poem about autumn leaves.",
    "What should I pack for a weekend camping trip?",
    "How do plants make their food?",
    "Suggest three ways to save money each month.",
    "Why is the sky blue?",
)

SELF_CHAT_SEEDS = (
    "Tell me about the history of the bicycle.",
    "How do I start learning to play the guitar?",
    "What is the difference between weather and climate?",
    "Write a friendly email inviting a colleague to lunch.",
    "Explain how a rainbow forms.",
    "What are some healthy breakfast ideas?",
    "Describe a busy market in a small town.",
    "How does a car engine work?",
    "Give me tips for a job interview.",
    "What is photosynthesis?",
    "Write a short story about a lost cat that finds its way home.",
    "How can I improve my sleep?",
    "What causes earthquakes?",
    "Summarise the rules of chess in a few sentences.",
    "What are the benefits of reading books?",
    "How do vaccines work?",
    "Plan a one-day trip to a museum for a family.",
    "Explain what the internet is.",
    "What should I consider when adopting a dog?",
    "Describe the water cycle.",
    "How do I make a cup of good coffee?",
    "Why do we have seasons?",
    "List some fun activities for a rainy day.",
    "What is a balanced diet?",
    "How do airplanes stay in the air?",
    "Write a thank-you note to a teacher.",
    "What are the planets in our solar system?",
    "How can a small business attract customers?",
    "Explain the importance of recycling.",
    "What is the role of the heart in the body?",
    "Give advice to a student starting university.",
    "How do bees make honey?",
)
