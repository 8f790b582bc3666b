"""dynamo-sglang: SGLang's offline engine (`sglang.Engine`) as the dynamo engine `sglang`."""
