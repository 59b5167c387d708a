fn main() {
    let fds = protox::compile(["proto/echo.proto"], ["proto"]).expect("compile echo.proto");
    tonic_prost_build::configure().compile_fds(fds).expect("generate echo code");
}
