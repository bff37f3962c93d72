module ecapturetest/gotls_cshared

go 1.19
